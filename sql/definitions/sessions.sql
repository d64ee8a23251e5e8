-- Sessions: deleting one keeps its usage for accounting but erases what was said.
-- The current definition; `migrate` re-applies this file whenever it changes (README: Development).

CREATE OR REPLACE FUNCTION chat_messages_forget_content() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.content := NULL;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER chat_messages_forget_content BEFORE UPDATE OF session_id ON chat_messages
    FOR EACH ROW WHEN (OLD.session_id IS NOT NULL AND NEW.session_id IS NULL)
    EXECUTE FUNCTION chat_messages_forget_content();
