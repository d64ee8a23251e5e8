-- Usage analytics: the rollup refresh and the report behind chitty_usage_analytics.

-- name: refresh_usage_analytics
-- Roll up to :limit queued completions (all when NULL); returns how many were rolled up.
SELECT refresh_usage_analytics(CAST(:limit AS integer)) AS rolled_up;

-- name: usage_report
-- Each bound is an instant (*_at, when the caller gave an offset) or a wall-clock time in :timezone (*_local).
SELECT *
FROM usage_report(
    CAST(:user_id AS text),
    coalesce(CAST(:start_at AS timestamptz), CAST(:start_local AS timestamp) AT TIME ZONE CAST(:timezone AS text)),
    coalesce(CAST(:end_at AS timestamptz), CAST(:end_local AS timestamp) AT TIME ZONE CAST(:timezone AS text)),
    CAST(:granularity AS text),
    CAST(:group_by AS text),
    CAST(:timezone AS text)
);
