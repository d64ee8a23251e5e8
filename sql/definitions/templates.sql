-- Session templates: the built-ins and a user's own, one per name.
-- The current definition; `migrate` re-applies this file whenever it changes (README: Development).

CREATE OR REPLACE FUNCTION session_templates_for(p_user_id text) RETURNS SETOF session_templates
LANGUAGE sql STABLE AS $$
    SELECT DISTINCT ON (t.name) t.*
    FROM session_templates t
    WHERE t.user_id = p_user_id OR t.user_id IS NULL
    ORDER BY t.name, t.user_id NULLS LAST
$$;

COMMENT ON FUNCTION session_templates_for(text) IS
    'The templates a user can use, one per name: their own, and the built-ins they have not shadowed.';
