//! The few places where SQLite and PostgreSQL SQL differ, in one room.
//!
//! Queries are written once in SQLite's spelling (`?` placeholders,
//! `BLOB`); [`Dialect`] rewrites them for PostgreSQL. Keeping
//! the difference this small is what lets one store implementation and one
//! test suite cover both engines.
//!
//! Also how statement texts that carry a count are written so that they
//! stay prepared on both engines: a bound row count ([`bound_count!`]) and
//! the row counts of multi-row statements ([`shaped`]).

/// How a bound row count is written: `LIMIT ` then `bound_count!()`, and
/// the same for `OFFSET`. SQLite (3.47 and later) reads a bare `LIMIT ?`'s
/// value while planning, and so marks the prepared statement expired
/// each time that parameter is bound: every execution of a cached paged
/// query was parsed and planned again (issue #21: about a third of the
/// SQLite work of a `DescribeInvocationResults`). Inside a `CAST` the
/// value is an expression the planner does not read, and the cached
/// statement is reused. PostgreSQL reads both forms the same.
macro_rules! bound_count {
    () => {
        "CAST(? AS BIGINT)"
    };
}
pub(crate) use bound_count;

/// The largest multi-row statement shape: 256 rows of at most 15 bound
/// values, 3,840 values, inside SQLite's 32,766 and PostgreSQL's 65,535.
pub(super) const MAX_SHAPE: usize = 256;

/// Splits `rows` into slices of 256, 128, …, 2 or 1 rows, the largest
/// first, so that each multi-row statement (the group commit's, a
/// `RunCommand`'s targets) has one of nine shapes, prepared once a
/// connection and kept in its statement cache. Before, each row count was
/// a new statement: SQLite parsed and compiled it anew, 9 % of its
/// thread's time in a fan-out (issue #21).
pub(super) fn shaped<T>(rows: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        let n = rest.len().min(MAX_SHAPE).checked_ilog2()?;
        let (shape, tail) = rest.split_at_checked(1 << n)?;
        rest = tail;
        Some(shape)
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// `?` and `?N` placeholders become `$n` on PostgreSQL. Text inside
    /// single-quoted literals is left alone.
    pub fn sql(self, sql: &str) -> String {
        if self == Dialect::Sqlite {
            return sql.to_string();
        }
        let mut out = String::with_capacity(sql.len() + 16);
        let mut next = 0u32;
        let mut in_literal = false;
        let mut chars = sql.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\'' => {
                    in_literal = !in_literal;
                    out.push(c);
                }
                '?' if !in_literal => {
                    out.push('$');
                    if chars.peek().is_some_and(|d| d.is_ascii_digit()) {
                        while let Some(d) = chars.next_if(|d| d.is_ascii_digit()) {
                            out.push(d);
                        }
                    } else {
                        next += 1;
                        out.push_str(&next.to_string());
                    }
                }
                _ => out.push(c),
            }
        }
        out
    }

    /// Transaction start. SQLite takes the write lock up front so two
    /// writers never deadlock on lock upgrade; PostgreSQL locks rows as it
    /// goes (see [`Dialect::for_update`]).
    pub fn begin(self) -> &'static str {
        match self {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        }
    }

    /// Suffix that locks rows read inside a transaction. SQLite's
    /// `BEGIN IMMEDIATE` already serialises writers.
    pub fn for_update(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }

    /// [`Dialect::for_update`] limited to the rows of `alias` (a query
    /// joining a key list, whose rows are not table rows).
    pub fn for_update_of(self, alias: &str) -> String {
        match self {
            Dialect::Sqlite => String::new(),
            Dialect::Postgres => format!(" FOR UPDATE OF {alias}"),
        }
    }

    /// A migration step, written for SQLite, in this dialect. PostgreSQL
    /// gets 64-bit integers (the store binds `i64`), `BYTEA` for bytes, and
    /// byte-order text collation so ordering matches SQLite's whatever the
    /// database's locale.
    pub fn ddl(self, step: &str) -> String {
        match self {
            Dialect::Sqlite => step.to_string(),
            Dialect::Postgres => step
                .replace("BLOB NOT NULL DEFAULT x''", "BYTEA NOT NULL DEFAULT ''::bytea")
                .replace(" INTEGER", " BIGINT")
                .replace(" TEXT", " TEXT COLLATE \"C\""),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_outside_literals() {
        let d = Dialect::Postgres;
        assert_eq!(d.sql("SELECT a FROM t WHERE a = ? AND b = '?' AND c = ?"), "SELECT a FROM t WHERE a = $1 AND b = '?' AND c = $2");
        assert_eq!(d.sql("UPDATE t SET a = ?1 WHERE b = ?2 AND c = ?1"), "UPDATE t SET a = $1 WHERE b = $2 AND c = $1");
        assert_eq!(Dialect::Sqlite.sql("a = ?"), "a = ?");
    }

    #[test]
    fn no_query_binds_a_bare_row_count() {
        // Every file of the SQL store: a bare `LIMIT ?` makes SQLite
        // re-plan the statement on every execution (see `bound_count!`).
        let sources = [
            include_str!("mod.rs"),
            include_str!("access.rs"),
            include_str!("batch.rs"),
            include_str!("cluster.rs"),
            include_str!("fires.rs"),
            include_str!("reports.rs"),
            include_str!("rows.rs"),
            include_str!("updates.rs"),
            include_str!("window.rs"),
            include_str!("writes.rs"),
        ];
        for (i, src) in sources.iter().enumerate() {
            let squeezed: String = src.split_whitespace().collect::<Vec<_>>().join(" ");
            for bare in ["LIMIT ?", "OFFSET ?"] {
                assert!(!squeezed.contains(bare), "source #{i} of store::sql writes `{bare}`; use bound_count!()");
            }
        }
        assert_eq!(Dialect::Postgres.sql(concat!("LIMIT ", bound_count!())), "LIMIT CAST($1 AS BIGINT)");
    }

    #[test]
    fn ddl_translates_types_for_postgres() {
        let pg = Dialect::Postgres.ddl("CREATE TABLE x (a TEXT PRIMARY KEY, n INTEGER NOT NULL, o BLOB NOT NULL DEFAULT x'');");
        assert_eq!(pg, "CREATE TABLE x (a TEXT COLLATE \"C\" PRIMARY KEY, n BIGINT NOT NULL, o BYTEA NOT NULL DEFAULT ''::bytea);");
        let all: String = super::super::super::schema::MIGRATIONS.iter().map(|s| Dialect::Postgres.ddl(s)).collect();
        assert!(!all.contains("BLOB") && !all.contains("INTEGER"), "untranslated type left in {all}");
    }

    #[test]
    fn rows_are_cut_into_power_of_two_shapes_largest_first_and_none_lost() {
        let sizes = |n: usize| -> Vec<usize> { shaped(&vec![0u8; n]).map(<[u8]>::len).collect() };
        assert_eq!(sizes(0), Vec::<usize>::new());
        assert_eq!(sizes(1), vec![1]);
        assert_eq!(sizes(3), vec![2, 1]);
        assert_eq!(sizes(140), vec![128, 8, 4]);
        assert_eq!(sizes(256), vec![256]);
        assert_eq!(sizes(600), vec![256, 256, 64, 16, 8]);
        for n in 0..1100 {
            let rows: Vec<usize> = (0..n).collect();
            let parts: Vec<&[usize]> = shaped(&rows).collect();
            assert_eq!(parts.concat(), rows, "{n} rows: order kept, nothing lost");
            assert!(
                parts.iter().all(|p| p.len().is_power_of_two() && p.len() <= MAX_SHAPE),
                "{n}: {:?}",
                parts.iter().map(|p| p.len()).collect::<Vec<_>>()
            );
            assert!(parts.windows(2).all(|w| w[0].len() >= w[1].len()), "{n}: largest first");
        }
    }
}
