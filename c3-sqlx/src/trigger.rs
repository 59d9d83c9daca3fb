//! Database-side invalidation: a trigger on the entity's table that calls
//! c3's invalidation function, so writes from any client keep every node
//! coherent.

use c3_core::SqlNames;

use crate::entity::Entity;

/// The trigger's name on the entity table.
const TRIGGER: &str = "\"c3_invalidate\"";

/// `"schema"."c3_invalidate_<table>"` beside the table.
fn function_name(entity: &Entity) -> String {
    // `table` is `"t"` or `"s"."t"` with validated identifiers, so the last
    // quoted part is the table's own name.
    let t = entity.table;
    let start = t[..t.len() - 1].rfind('"').unwrap_or(0);
    let name: String = format!("c3_invalidate_{}", &t[start + 1..t.len() - 1])
        .chars()
        .take(63)
        .collect();
    format!("{}\"{name}\"", &t[..start])
}

/// SQL that installs (or replaces) the trigger. Idempotent.
pub(crate) fn install_sql(entity: &Entity, names: &SqlNames) -> String {
    let func = function_name(entity);
    let old = entity.trigger_key.replace("$ROW", "OLD");
    let new = entity.trigger_key.replace("$ROW", "NEW");
    // The channel is an identifier c3 validated ([a-z0-9_]), so it can sit in
    // a string literal as is.
    format!(
        "CREATE OR REPLACE FUNCTION {func}() RETURNS trigger LANGUAGE plpgsql AS $c3$
DECLARE
    ks text[] := '{{}}';
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        ks := ks || ({old});
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        ks := ks || ({new});
    END IF;
    -- The keys are also tags: entries found by a secondary key are tagged
    -- with their row's key.
    -- The keys are also HTTP surrogate keys: responses tagged with an
    -- entity's key go too.
    PERFORM {inv}('{channel}', ks, ks || ARRAY(SELECT '{http}' || k FROM unnest(ks) AS k));
    RETURN NULL;
END
$c3$;
CREATE OR REPLACE TRIGGER {TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION {func}();",
        inv = names.invalidate_function,
        channel = names.channel,
        // A constant of c3's: letters and a colon, no quote.
        http = c3_core::HTTP_TAG_PREFIX,
        table = entity.table,
    )
}

/// SQL that removes the trigger and its function. Idempotent.
pub(crate) fn drop_sql(entity: &Entity) -> String {
    format!(
        "DROP TRIGGER IF EXISTS {TRIGGER} ON {table};\nDROP FUNCTION IF EXISTS {func}();",
        table = entity.table,
        func = function_name(entity),
    )
}
