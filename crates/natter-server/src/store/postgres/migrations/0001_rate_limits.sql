-- The security rate limits shared by every node: one row per (limit, key)
-- holding GCRA's theoretical arrival time, in milliseconds of the
-- database's clock (one clock for all nodes, whatever theirs say).
CREATE TABLE rate_limits (
    limit_name text NOT NULL,
    key text NOT NULL,
    tat_ms bigint NOT NULL,
    PRIMARY KEY (limit_name, key)
);

-- Takes `n` units of a limit for a key: 0 when allowed, otherwise how many
-- milliseconds to wait (-1: never, more than the burst at once). A burst of
-- `burst` units; one unit comes back every `interval_ms`. The row is locked
-- for the decision, so concurrent takes from many nodes are serialized and
-- never hand out more than the budget.
CREATE FUNCTION natter_rate_take(p_limit text, p_key text, p_n integer, p_interval_ms bigint, p_burst integer)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    now_ms bigint := floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint;
    old_tat bigint;
    new_tat bigint;
    tolerance bigint := p_interval_ms * p_burst;
BEGIN
    IF p_n > p_burst THEN
        RETURN -1;
    END IF;
    INSERT INTO rate_limits (limit_name, key, tat_ms) VALUES (p_limit, p_key, now_ms)
        ON CONFLICT DO NOTHING;
    SELECT tat_ms INTO old_tat FROM rate_limits
        WHERE limit_name = p_limit AND key = p_key FOR UPDATE;
    new_tat := greatest(old_tat, now_ms) + p_n * p_interval_ms;
    IF new_tat - now_ms > tolerance THEN
        RETURN new_tat - now_ms - tolerance;
    END IF;
    UPDATE rate_limits SET tat_ms = new_tat WHERE limit_name = p_limit AND key = p_key;
    RETURN 0;
END;
$$;

-- Rows whose budget is full again say nothing a missing row does not.
CREATE FUNCTION natter_rate_sweep() RETURNS bigint
LANGUAGE sql
AS $$
    WITH gone AS (
        DELETE FROM rate_limits
        WHERE tat_ms < floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint
        RETURNING 1
    )
    SELECT count(*) FROM gone;
$$;
