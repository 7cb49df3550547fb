//! Tenant API keys, tenant users and inbound webhook receipts: the statements both stores share
//! (`store_sql::access`), run the PostgreSQL way ([`crate::dialect::Pg`]).

use super::PostgresStore;
use crate::dialect::Pg;

impl store_sql::SqlStore for PostgresStore {
    type Dialect = Pg;

    fn sql(&self) -> store_sql::Sql<'_, Pg> {
        store_sql::Sql { read: &self.db, write: &self.db }
    }
}

store_sql::access_stores!(PostgresStore);
