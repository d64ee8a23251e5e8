-- The model catalogue: what each OpenAI model can do, names an upstream gives its models, and prices as
-- OpenAI bills them (cache writes, a long-context tier, the flex / priority / ultrafast service tiers, the
-- web-search fee per call). The rows are imported from LiteLLM's price table (sql/catalogue/, `migrate`,
-- `pricing import`); none are seeded here.

ALTER TABLE model_pricing
    ADD COLUMN cache_write_per_mtok numeric(14, 6) CHECK (cache_write_per_mtok >= 0),
    ADD COLUMN long_context_threshold integer CHECK (long_context_threshold > 0),
    ADD COLUMN web_search_low_per_call numeric(14, 6) CHECK (web_search_low_per_call >= 0),
    ADD COLUMN web_search_medium_per_call numeric(14, 6) CHECK (web_search_medium_per_call >= 0),
    ADD COLUMN web_search_high_per_call numeric(14, 6) CHECK (web_search_high_per_call >= 0);

COMMENT ON COLUMN model_pricing.input_per_mtok IS
    'Price of uncached prompt tokens at the default service tier, up to the long-context threshold.';
COMMENT ON COLUMN model_pricing.output_per_mtok IS
    'Price of completion tokens (reasoning included) at the default service tier, up to the long-context threshold.';
COMMENT ON COLUMN model_pricing.cache_write_per_mtok IS
    'Price of prompt tokens written to the prompt cache; NULL: billed as input.';
COMMENT ON COLUMN model_pricing.long_context_threshold IS
    'Prompt tokens above which the whole call bills at the long-context rates (model_pricing_rates); NULL: none.';
COMMENT ON COLUMN model_pricing.web_search_low_per_call IS 'USD per web search call at search context size low.';
COMMENT ON COLUMN model_pricing.web_search_medium_per_call IS
    'USD per web search call at search context size medium (what a recorded call is billed).';
COMMENT ON COLUMN model_pricing.web_search_high_per_call IS 'USD per web search call at search context size high.';

CREATE TABLE model_pricing_rates (
    pricing_id            bigint NOT NULL REFERENCES model_pricing (id) ON DELETE CASCADE,
    service_tier          text NOT NULL CHECK (service_tier IN ('default', 'flex', 'priority', 'ultrafast')),
    long_context          boolean NOT NULL,
    input_per_mtok        numeric(14, 6) NOT NULL CHECK (input_per_mtok >= 0),
    cached_input_per_mtok numeric(14, 6) CHECK (cached_input_per_mtok >= 0),
    cache_write_per_mtok  numeric(14, 6) CHECK (cache_write_per_mtok >= 0),
    output_per_mtok       numeric(14, 6) NOT NULL CHECK (output_per_mtok >= 0),
    PRIMARY KEY (pricing_id, service_tier, long_context),
    -- The default tier's short-context rates are the price row's own columns.
    CHECK (service_tier <> 'default' OR long_context)
);

COMMENT ON TABLE model_pricing_rates IS
    'USD per million tokens of a price row at another service tier or past its long-context threshold; a call '
    'served at a tier without rates of its own bills at the default tier''s.';
COMMENT ON COLUMN model_pricing_rates.service_tier IS 'The tier that served the call: default, flex, priority, ultrafast.';
COMMENT ON COLUMN model_pricing_rates.long_context IS
    'true: the rates of a call whose prompt exceeds the price row''s long_context_threshold.';
COMMENT ON COLUMN model_pricing_rates.cached_input_per_mtok IS 'Price of cached prompt tokens; NULL: billed as input.';
COMMENT ON COLUMN model_pricing_rates.cache_write_per_mtok IS
    'Price of prompt tokens written to the cache; NULL: billed as input.';

CREATE TABLE model_catalogue (
    model                    text PRIMARY KEY CHECK (length(model) BETWEEN 1 AND 200),
    reasoning                boolean NOT NULL DEFAULT false,
    reasoning_efforts        text[] NOT NULL DEFAULT '{}'
                             CHECK (reasoning_efforts <@ ARRAY['none', 'minimal', 'low', 'medium', 'high', 'xhigh',
                                                               'max']),
    default_reasoning_effort text CHECK (default_reasoning_effort IN ('none', 'minimal', 'low', 'medium', 'high',
                                                                      'xhigh', 'max')),
    vision                   boolean NOT NULL DEFAULT false,
    pdf_input                boolean NOT NULL DEFAULT false,
    function_calling         boolean NOT NULL DEFAULT false,
    structured_output        boolean NOT NULL DEFAULT false,
    web_search               boolean NOT NULL DEFAULT false,
    context_window           integer CHECK (context_window > 0),
    max_output_tokens        integer CHECK (max_output_tokens > 0),
    apis                     text[] NOT NULL DEFAULT '{}' CHECK (apis <@ ARRAY['chat', 'responses']),
    shutdown_on              date,
    successor                text CHECK (length(successor) BETWEEN 1 AND 200),
    updated_at               timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE model_catalogue IS
    'What each known model can do, one row per model name, updated in place by each import (prices live in '
    'model_pricing, effective-dated).';
COMMENT ON COLUMN model_catalogue.model IS 'Model name as OpenAI lists it; a dated snapshot may have a row of its own.';
COMMENT ON COLUMN model_catalogue.reasoning IS 'A reasoning model: it thinks (billed as output) and takes an effort.';
COMMENT ON COLUMN model_catalogue.reasoning_efforts IS
    'The reasoning_effort values the model accepts, from none, minimal, low, medium, high, xhigh, max.';
COMMENT ON COLUMN model_catalogue.default_reasoning_effort IS 'The effort used when none is sent; NULL: not listed.';
COMMENT ON COLUMN model_catalogue.vision IS 'Reads images.';
COMMENT ON COLUMN model_catalogue.pdf_input IS 'Reads PDF files.';
COMMENT ON COLUMN model_catalogue.function_calling IS 'Calls functions (tools).';
COMMENT ON COLUMN model_catalogue.structured_output IS 'Answers to a JSON schema (response_format json_schema).';
COMMENT ON COLUMN model_catalogue.web_search IS 'Takes OpenAI''s web search tool.';
COMMENT ON COLUMN model_catalogue.context_window IS 'Most prompt tokens the model takes; NULL: not listed.';
COMMENT ON COLUMN model_catalogue.max_output_tokens IS 'Most completion tokens the model writes; NULL: not listed.';
COMMENT ON COLUMN model_catalogue.apis IS 'The OpenAI APIs that serve the model: chat (Chat Completions), responses.';
COMMENT ON COLUMN model_catalogue.shutdown_on IS 'The day OpenAI shuts the model down (announced); NULL: none announced.';
COMMENT ON COLUMN model_catalogue.successor IS 'The model OpenAI recommends instead, once a shutdown is announced.';
COMMENT ON COLUMN model_catalogue.updated_at IS 'When an import last changed the row.';

CREATE TABLE model_aliases (
    name       text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}$'),
    model      text NOT NULL CHECK (length(model) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (name <> model)
);

COMMENT ON TABLE model_aliases IS
    'An upstream''s own name for a model (an Azure deployment, a proxy''s route, a fine-tune): replies under that '
    'name are priced and described as the model.';
COMMENT ON COLUMN model_aliases.model IS 'The model the name stands for, as model_pricing and model_catalogue name it.';

ALTER TABLE chat_messages
    ADD COLUMN service_tier text,
    ADD COLUMN cache_write_tokens integer NOT NULL DEFAULT 0 CHECK (cache_write_tokens >= 0),
    ADD COLUMN web_search_calls integer NOT NULL DEFAULT 0 CHECK (web_search_calls >= 0),
    ADD CONSTRAINT chat_messages_prompt_parts CHECK (cached_tokens + cache_write_tokens <= prompt_tokens);

COMMENT ON COLUMN chat_messages.service_tier IS
    'The service tier that served the call, as the response reported it (default, flex, priority...); it sets the '
    'rates of cost_usd. NULL: none reported (default rates).';
COMMENT ON COLUMN chat_messages.cache_write_tokens IS
    'Prompt tokens written to the prompt cache (part of prompt_tokens), billed at the cache-write price.';
COMMENT ON COLUMN chat_messages.web_search_calls IS 'Web searches the model ran for the reply, each billed per call.';

ALTER TABLE model_configs
    ADD COLUMN reasoning_effort text
        CHECK (reasoning_effort IN ('none', 'minimal', 'low', 'medium', 'high', 'xhigh')),
    ADD COLUMN verbosity text CHECK (verbosity IN ('low', 'medium', 'high')),
    ADD COLUMN reasoning_summary text CHECK (reasoning_summary IN ('auto', 'concise', 'detailed')),
    ADD COLUMN service_tier text CHECK (service_tier IN ('auto', 'default', 'flex', 'priority')),
    ADD COLUMN web_search text CHECK (web_search IN ('low', 'medium', 'high'));

COMMENT ON COLUMN model_configs.reasoning_effort IS
    'How hard a reasoning model thinks; NULL: the model''s default. A completion''s own value wins.';
COMMENT ON COLUMN model_configs.verbosity IS 'How long a GPT-5 family answer is; NULL: upstream default.';
COMMENT ON COLUMN model_configs.reasoning_summary IS
    'Ask for a summary of the reasoning (Responses API); NULL: none.';
COMMENT ON COLUMN model_configs.service_tier IS
    'The service tier asked for (flex: cheaper, slower; priority: faster, dearer); NULL: upstream default.';
COMMENT ON COLUMN model_configs.web_search IS
    'OpenAI''s web search at this search context size (Responses API, billed per call); NULL: off.';

-- usage_cost (sql/definitions/pricing.sql) replaces it: it prices tiers, long context, cache writes and searches.
DROP FUNCTION message_cost(model_pricing, integer, integer, integer);
