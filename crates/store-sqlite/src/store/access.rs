//! Tenant API keys, tenant users and inbound webhook receipts: the statements both stores share
//! (`store_sql::access`), run the SQLite way ([`crate::dialect::Lite`]).

use super::SqliteStore;
use crate::dialect::Lite;

impl store_sql::SqlStore for SqliteStore {
    type Dialect = Lite;

    fn sql(&self) -> store_sql::Sql<'_, Lite> {
        store_sql::Sql { read: &self.reader, write: &self.writer }
    }
}

store_sql::access_stores!(SqliteStore);
