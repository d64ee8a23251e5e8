-- Sessions: metadata changes are merges; deleting a session keeps its usage for accounting but erases what
-- was said.
-- The current definition; `migrate` re-applies this file whenever it changes (README: Development).

CREATE OR REPLACE FUNCTION chat_messages_forget_content() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.content := NULL;
    NEW.parts := NULL;
    NEW.tool_calls := NULL;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER chat_messages_forget_content BEFORE UPDATE OF session_id ON chat_messages
    FOR EACH ROW WHEN (OLD.session_id IS NOT NULL AND NEW.session_id IS NULL)
    EXECUTE FUNCTION chat_messages_forget_content();

CREATE OR REPLACE FUNCTION merged_metadata(p_metadata jsonb, p_changes jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    -- Keys given replace, keys given as null are removed.
    SELECT (p_metadata || p_changes) - ARRAY(SELECT key FROM jsonb_each(p_changes) WHERE value = 'null'::jsonb)
$$;

COMMENT ON FUNCTION merged_metadata(jsonb, jsonb) IS
    'A session''s metadata after a change: keys given replace, keys given as null are removed.';
