-- Messages beyond plain text: content parts (images and files), the developer role, and function
-- tool calls with their results, kept in sessions and sent back as history.

ALTER TABLE chat_messages
    DROP CONSTRAINT chat_messages_role_check,
    ADD CONSTRAINT chat_messages_role_check CHECK (role IN ('system', 'developer', 'user', 'assistant', 'tool')),
    ADD COLUMN parts jsonb CHECK (jsonb_typeof(parts) = 'array'),
    ADD COLUMN tool_calls jsonb CHECK (jsonb_typeof(tool_calls) = 'array'),
    ADD COLUMN tool_call_id text CHECK (length(tool_call_id) BETWEEN 1 AND 200);

COMMENT ON COLUMN chat_messages.parts IS
    'A message given as content parts (text, image_url, file), as sent; content then holds NULL. NULL once the '
    'session is deleted.';
COMMENT ON COLUMN chat_messages.tool_calls IS
    'An assistant message''s function calls, in the Chat Completions shape [{id, type, function: {name, arguments}}].';
COMMENT ON COLUMN chat_messages.tool_call_id IS 'A tool message: the id of the call it answers.';

-- prepare_completion takes the call's model options (settings and what the messages hold).
DROP FUNCTION IF EXISTS prepare_completion(text, text, uuid, text, integer, uuid, text, integer, jsonb, jsonb);
