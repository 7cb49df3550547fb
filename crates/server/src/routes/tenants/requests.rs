//! Parsing and validating tenant request bodies (create, patch, users): every field error
//! reported at its JSON Pointer, nothing stored when one is wrong.

use saga_core::tenant::{is_valid_tenant_id, SlaTier, StorageMode, Tier};
use saga_core::FieldError;
use saga_store::TenantPatch;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use tenancy::{Lifecycle, NewTenant};

/// Limits on tenant fields.
pub(crate) const NAME_MAX_CHARS: usize = 200;

pub(crate) const LIST_ITEMS_MAX: usize = 100;

pub(crate) const METADATA_MAX_BYTES: usize = 64 * 1024;

pub(crate) const EMAIL_MAX_CHARS: usize = 254;

pub(super) struct Errors(pub(super) Vec<FieldError>);

impl Errors {
    pub(super) fn add(&mut self, path: &str, message: impl Into<String>) {
        self.0.push(FieldError { path: path.into(), message: message.into() });
    }
}

pub(super) fn string_field(map: &Map<String, Value>, key: &str, errors: &mut Errors) -> Option<String> {
    match map.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errors.add(&format!("/{key}"), "must be a string");
            None
        }
    }
}

pub(super) fn enum_field<T>(
    map: &Map<String, Value>,
    key: &str,
    parse: fn(&str) -> Option<T>,
    expected: String,
    errors: &mut Errors,
) -> Option<T> {
    let text = string_field(map, key, errors)?;
    let parsed = parse(&text);
    if parsed.is_none() {
        errors.add(&format!("/{key}"), format!("unknown {key} {text:?}; expected one of {expected}"));
    }
    parsed
}

pub(super) fn check_name(name: Option<String>, errors: &mut Errors, required: bool) -> Option<String> {
    match name {
        Some(name) if is_blank(&name) => {
            errors.add("/name", "must not be empty");
            None
        }
        Some(name) if name.chars().count() > NAME_MAX_CHARS => {
            errors.add("/name", format!("must be at most {NAME_MAX_CHARS} characters"));
            None
        }
        Some(name) => Some(name),
        None => {
            if required {
                errors.add("/name", "is required");
            }
            None
        }
    }
}

/// The items of a list field, with "not an array" and "too many" reported at `path`.
pub(super) fn list_items<'a>(value: &'a Value, path: &str, shape: &str, errors: &mut Errors) -> Option<&'a Vec<Value>> {
    let Some(items) = value.as_array() else {
        errors.add(path, format!("must be an array of {shape}"));
        return None;
    };
    if items.len() > LIST_ITEMS_MAX {
        errors.add(path, format!("at most {LIST_ITEMS_MAX} items"));
    }
    Some(items)
}

pub(super) fn check_domains(value: Option<&Value>, errors: &mut Errors) -> Option<Value> {
    let value = value?;
    let items = list_items(value, "/domains", "domain names", errors)?;
    for (i, item) in items.iter().enumerate() {
        let ok = item.as_str().is_some_and(|d| {
            !d.is_empty()
                && d.len() <= 253
                && d.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                && !d.starts_with('.')
                && !d.ends_with('.')
        });
        if !ok {
            errors.add(&format!("/domains/{i}"), "must be a domain name like app.example.com");
        }
    }
    Some(value.clone())
}

pub(super) fn check_contacts(value: Option<&Value>, errors: &mut Errors) -> Option<Value> {
    let value = value?;
    let items = list_items(value, "/contacts", "{name, email, role}", errors)?;
    for (i, item) in items.iter().enumerate() {
        let Some(contact) = item.as_object() else {
            errors.add(&format!("/contacts/{i}"), "must be an object {name, email, role}");
            continue;
        };
        for key in contact.keys() {
            if !["name", "email", "role"].contains(&key.as_str()) {
                errors.add(&format!("/contacts/{i}/{key}"), "unknown field; expected name, email, role");
            }
        }
        for key in ["name", "email", "role"] {
            match contact.get(key) {
                Some(Value::String(s)) if !is_blank(s) && s.chars().count() <= EMAIL_MAX_CHARS => {
                    if key == "email" && !is_email(s) {
                        errors.add(&format!("/contacts/{i}/email"), "must be an email address");
                    }
                }
                _ => errors.add(&format!("/contacts/{i}/{key}"), "is required: a non-empty string"),
            }
        }
    }
    Some(value.clone())
}

pub(super) fn is_email(text: &str) -> bool {
    let Some((local, domain)) = text.split_once('@') else {
        return false;
    };
    !local.is_empty() && domain.contains('.') && !text.contains(is_space) && text.chars().count() <= EMAIL_MAX_CHARS
}

/// White space as both Rust and the OpenAPI document's patterns (ECMAScript `\s`) see it, so
/// the schema's `\S` and the server agree on what is blank.
pub(crate) fn is_space(c: char) -> bool {
    c.is_whitespace() || c == '\u{feff}'
}

pub(crate) fn is_blank(text: &str) -> bool {
    text.chars().all(is_space)
}

pub(super) fn check_metadata(value: Option<&Value>, errors: &mut Errors) -> Option<Value> {
    let value = value?;
    if !value.is_object() {
        errors.add("/metadata", "must be an object");
        return None;
    }
    if value.to_string().len() > METADATA_MAX_BYTES {
        errors.add("/metadata", format!("must be at most {METADATA_MAX_BYTES} bytes of JSON"));
    }
    Some(value.clone())
}

pub(super) fn parse_tenant(body: &Value, lifecycle: &Lifecycle) -> Result<NewTenant, ApiError> {
    let Some(map) = body.as_object() else {
        return Err(ApiError::field("", "the tenant must be a JSON object"));
    };
    let mut errors = Errors(Vec::new());
    for key in map.keys() {
        let known = ["id", "name", "tier", "storage_mode", "sla_tier", "domains", "contacts", "metadata"];
        if !known.contains(&key.as_str()) {
            errors.add(&format!("/{key}"), format!("unknown field; expected {}", known.join(", ")));
        }
    }
    let id = string_field(map, "id", &mut errors);
    match &id {
        None if !map.contains_key("id") => errors.add("/id", "is required"),
        Some(id) if !is_valid_tenant_id(id) => errors.add("/id", saga_core::tenant::TENANT_ID_RULE),
        _ => {}
    }
    let name = check_name(string_field(map, "name", &mut errors), &mut errors, true);
    let tier = enum_field(map, "tier", Tier::parse, Tier::expected(), &mut errors);
    let storage_mode = enum_field(map, "storage_mode", StorageMode::parse, StorageMode::expected(), &mut errors);
    let sla_tier = enum_field(map, "sla_tier", SlaTier::parse, SlaTier::expected(), &mut errors);
    let domains = check_domains(map.get("domains"), &mut errors);
    let contacts = check_contacts(map.get("contacts"), &mut errors);
    let metadata = check_metadata(map.get("metadata"), &mut errors);
    let tier = tier.unwrap_or(Tier::Pooled);
    let storage_mode = match lifecycle.storage_mode(tier, storage_mode) {
        Ok(mode) => mode,
        Err(why) => {
            errors.add("/storage_mode", why);
            tier.default_storage_mode()
        }
    };
    let (Some(id), Some(name), true) = (id, name, errors.0.is_empty()) else {
        return Err(ApiError::validation("the tenant is invalid", errors.0));
    };
    Ok(NewTenant {
        id,
        name,
        tier,
        storage_mode,
        sla_tier: sla_tier.unwrap_or(SlaTier::Standard),
        domains: domains.unwrap_or_else(|| json!([])),
        contacts: contacts.unwrap_or_else(|| json!([])),
        metadata: metadata.unwrap_or_else(|| json!({})),
    })
}

/// A validated `PATCH /v1/tenants/{id}` body.
pub(super) fn parse_patch(body: &Value) -> Result<TenantPatch, ApiError> {
    let Some(map) = body.as_object() else {
        return Err(ApiError::field("", "the patch must be a JSON object"));
    };
    let mut errors = Errors(Vec::new());
    for key in map.keys() {
        if !["name", "sla_tier", "domains", "contacts", "metadata"].contains(&key.as_str()) {
            errors
                .add(&format!("/{key}"), "cannot be changed; PATCH takes name, sla_tier, domains, contacts, metadata");
        }
    }
    let patch = TenantPatch {
        name: check_name(string_field(map, "name", &mut errors), &mut errors, false),
        sla_tier: enum_field(map, "sla_tier", SlaTier::parse, SlaTier::expected(), &mut errors),
        domains: check_domains(map.get("domains"), &mut errors),
        contacts: check_contacts(map.get("contacts"), &mut errors),
        metadata: check_metadata(map.get("metadata"), &mut errors),
        migrations: None,
    };
    if !errors.0.is_empty() {
        return Err(ApiError::validation("the patch is invalid", errors.0));
    }
    Ok(patch)
}

pub(super) const USER_ROLES: &[&str] = &["admin", "member"];

pub(super) fn parse_user(body: &Value) -> Result<(String, String, String), ApiError> {
    let Some(map) = body.as_object() else {
        return Err(ApiError::field("", "the user must be a JSON object {email, name, role}"));
    };
    let mut errors = Errors(Vec::new());
    for key in map.keys() {
        if !["email", "name", "role"].contains(&key.as_str()) {
            errors.add(&format!("/{key}"), "unknown field; expected email, name, role");
        }
    }
    let email = string_field(map, "email", &mut errors);
    if !email.as_deref().is_some_and(is_email) {
        errors.add("/email", "is required: an email address");
    }
    let name = check_name(string_field(map, "name", &mut errors), &mut errors, true);
    let role = string_field(map, "role", &mut errors).unwrap_or_else(|| "member".into());
    if !USER_ROLES.contains(&role.as_str()) {
        errors.add("/role", "must be admin or member");
    }
    match (email, name, errors.0.is_empty()) {
        (Some(email), Some(name), true) => Ok((email.to_ascii_lowercase(), name, role)),
        _ => Err(ApiError::validation("the user is invalid", errors.0)),
    }
}
