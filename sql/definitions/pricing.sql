-- Prices and the catalogue: which price row a model is billed at, what a usage costs, what a model can do,
-- and the import of a catalogue (LiteLLM's price table, normalised by chalicelib/pricing.py).
-- The current definition; `migrate` re-applies this file whenever it changes (README: Development).

CREATE OR REPLACE FUNCTION pricing_model_name(p_model text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    -- gpt-4o-2024-08-06 -> gpt-4o, gpt-4-0613 -> gpt-4, ft:gpt-4o-2024-08-06:acme::B1x -> ft:gpt-4o-2024-08-06
    SELECT CASE WHEN p_model ~ '^ft:[^:]+:' THEN regexp_replace(p_model, '^(ft:[^:]+):.*$', '\1')
                ELSE regexp_replace(p_model, '-(\d{4}-\d{2}-\d{2}|\d{4})$', '') END
$$;

COMMENT ON FUNCTION pricing_model_name(text) IS
    'The base model a dated snapshot name is priced as (a fine-tuned model: the fine-tune it was made from).';

CREATE OR REPLACE FUNCTION aliased_model(p_model text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT a.model FROM model_aliases a WHERE a.name = p_model), p_model)
$$;

COMMENT ON FUNCTION aliased_model(text) IS
    'The model an upstream''s own name stands for (model_aliases), else the name itself.';

CREATE OR REPLACE FUNCTION price_in_force(p_model text, p_at timestamptz) RETURNS model_pricing
LANGUAGE sql STABLE AS $$
    SELECT p.* FROM (SELECT aliased_model(p_model) AS name) m
    JOIN model_pricing p ON p.model IN (m.name, pricing_model_name(m.name))
    WHERE p.effective_from <= p_at
    ORDER BY (p.model = m.name) DESC, p.effective_from DESC
    LIMIT 1
$$;

COMMENT ON FUNCTION price_in_force(text, timestamptz) IS
    'The price row of a model in force at a time: its alias resolved, then its exact name, else the base model of '
    'a dated snapshot; NULL if none.';

CREATE OR REPLACE FUNCTION usage_cost(
    p_price model_pricing,
    p_prompt integer,
    p_cached integer,
    p_cache_write integer,
    p_completion integer,
    p_tier text,
    p_web_searches integer
) RETURNS numeric
LANGUAGE sql STABLE AS $$
    WITH call AS (
        SELECT CASE lower(p_tier) WHEN 'flex' THEN 'flex' WHEN 'priority' THEN 'priority' WHEN 'fast' THEN 'priority'
                                  WHEN 'ultrafast' THEN 'ultrafast' ELSE 'default' END AS tier,
               coalesce(p_prompt > p_price.long_context_threshold, false) AS long_context
    ), rates AS (
        -- The tier's own rates for the call's length, else the default tier's for that length, else the row's.
        SELECT r.input_per_mtok, r.cached_input_per_mtok, r.cache_write_per_mtok, r.output_per_mtok,
               CASE WHEN r.service_tier = c.tier THEN 1 ELSE 2 END AS preference
        FROM call c
        JOIN model_pricing_rates r
          ON r.pricing_id = p_price.id AND r.long_context = c.long_context AND r.service_tier IN (c.tier, 'default')
        UNION ALL
        SELECT p_price.input_per_mtok, p_price.cached_input_per_mtok, p_price.cache_write_per_mtok,
               p_price.output_per_mtok, 3
    )
    SELECT ((p_prompt - coalesce(p_cached, 0) - coalesce(p_cache_write, 0)) * r.input_per_mtok
            + coalesce(p_cached, 0) * coalesce(r.cached_input_per_mtok, r.input_per_mtok)
            + coalesce(p_cache_write, 0) * coalesce(r.cache_write_per_mtok, r.input_per_mtok)
            + p_completion * r.output_per_mtok) / 1000000
           + coalesce(p_web_searches, 0) * coalesce(p_price.web_search_medium_per_call, 0)
    FROM rates r
    ORDER BY r.preference
    LIMIT 1
$$;

COMMENT ON FUNCTION usage_cost(model_pricing, integer, integer, integer, integer, text, integer) IS
    'USD for a usage as OpenAI bills it, at the rates of the tier that served it (flex, priority (or fast), '
    'ultrafast; any other tier, or one without rates of its own: default) and, past the long-context threshold, '
    'the long-context rates for the whole call: uncached prompt at input, cached at cached input, cache writes at '
    'the cache-write price (else input), completion (reasoning included) at output, plus each web search at the '
    'medium search context price (none listed: free).';

CREATE OR REPLACE FUNCTION model_info(p_model text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
               'model', c.model, 'reasoning', c.reasoning, 'efforts', to_jsonb(c.reasoning_efforts),
               'default_effort', c.default_reasoning_effort, 'vision', c.vision, 'pdf', c.pdf_input,
               'function_calling', c.function_calling, 'structured_output', c.structured_output,
               'web_search', c.web_search, 'context_window', c.context_window, 'max_output', c.max_output_tokens,
               'apis', to_jsonb(c.apis), 'shutdown_on', c.shutdown_on, 'successor', c.successor,
               'retired', coalesce(c.shutdown_on <= current_date, false))
    FROM (SELECT aliased_model(p_model) AS name) m
    JOIN model_catalogue c ON c.model IN (m.name, pricing_model_name(m.name))
    ORDER BY (c.model = m.name) DESC
    LIMIT 1
$$;

COMMENT ON FUNCTION model_info(text) IS
    'What a model can do, from model_catalogue (alias resolved, then the exact name, else a snapshot''s base): '
    '{model, reasoning, efforts, default_effort, vision, pdf, function_calling, structured_output, web_search, '
    'context_window, max_output, apis, shutdown_on, successor, retired}; NULL for a model it does not know.';

CREATE OR REPLACE FUNCTION price_rates(p_price model_pricing) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'input_per_mtok', p_price.input_per_mtok,
        'cached_input_per_mtok', coalesce(p_price.cached_input_per_mtok, p_price.input_per_mtok),
        'cache_write_per_mtok', coalesce(p_price.cache_write_per_mtok, p_price.input_per_mtok),
        'output_per_mtok', p_price.output_per_mtok,
        'long_context', (
            SELECT jsonb_build_object(
                       'above_tokens', p_price.long_context_threshold, 'input_per_mtok', r.input_per_mtok,
                       'cached_input_per_mtok', coalesce(r.cached_input_per_mtok, r.input_per_mtok),
                       'cache_write_per_mtok', coalesce(r.cache_write_per_mtok, r.input_per_mtok),
                       'output_per_mtok', r.output_per_mtok)
            FROM model_pricing_rates r
            WHERE r.pricing_id = p_price.id AND r.service_tier = 'default' AND r.long_context),
        'tiers', (
            SELECT coalesce(jsonb_object_agg(t.tier, t.rates), '{}'::jsonb)
            FROM (
                SELECT r.service_tier AS tier,
                       jsonb_build_object(
                           'input_per_mtok', r.input_per_mtok,
                           'cached_input_per_mtok', coalesce(r.cached_input_per_mtok, r.input_per_mtok),
                           'cache_write_per_mtok', coalesce(r.cache_write_per_mtok, r.input_per_mtok),
                           'output_per_mtok', r.output_per_mtok,
                           'long_context', (
                               SELECT jsonb_build_object(
                                          'input_per_mtok', l.input_per_mtok,
                                          'cached_input_per_mtok', coalesce(l.cached_input_per_mtok, l.input_per_mtok),
                                          'cache_write_per_mtok', coalesce(l.cache_write_per_mtok, l.input_per_mtok),
                                          'output_per_mtok', l.output_per_mtok)
                               FROM model_pricing_rates l
                               WHERE l.pricing_id = p_price.id AND l.service_tier = r.service_tier AND l.long_context
                           )) AS rates
                FROM model_pricing_rates r
                WHERE r.pricing_id = p_price.id AND r.service_tier <> 'default' AND NOT r.long_context
            ) t),
        'web_search_per_call', CASE WHEN num_nonnulls(p_price.web_search_low_per_call,
                                                      p_price.web_search_medium_per_call,
                                                      p_price.web_search_high_per_call) > 0
                                    THEN jsonb_build_object('low', p_price.web_search_low_per_call,
                                                            'medium', p_price.web_search_medium_per_call,
                                                            'high', p_price.web_search_high_per_call) END)
$$;

COMMENT ON FUNCTION price_rates(model_pricing) IS
    'Every rate of a price row as it bills (a missing cached or cache-write price shows as the input price): '
    '{input_per_mtok, cached_input_per_mtok, cache_write_per_mtok, output_per_mtok, long_context {above_tokens, '
    'rates} | null, tiers {flex|priority|ultrafast: rates and their long_context | null}, web_search_per_call '
    '{low, medium, high} | null}.';

CREATE OR REPLACE FUNCTION import_model_catalogue(
    p_models jsonb,
    p_effective_from timestamptz,
    p_first_from timestamptz
) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    entry jsonb;
    v_model text;
    incoming model_pricing;
    in_force model_pricing;
    since timestamptz;
    new_id bigint;
    added jsonb := '[]'::jsonb;
    changed jsonb := '[]'::jsonb;
    unchanged integer := 0;
BEGIN
    -- One import at a time (migrate, the daily upkeep, an operator): each compares with what the last one left.
    PERFORM pg_advisory_xact_lock(hashtextextended('chitty-model-catalogue', 0));
    FOR entry IN SELECT value FROM jsonb_array_elements(p_models) LOOP
        v_model := entry ->> 'model';
        INSERT INTO model_catalogue AS c (
            model, reasoning, reasoning_efforts, default_reasoning_effort, vision, pdf_input, function_calling,
            structured_output, web_search, context_window, max_output_tokens, apis, shutdown_on, successor)
        SELECT v_model, i.reasoning, i.reasoning_efforts, i.default_reasoning_effort, i.vision, i.pdf_input,
               i.function_calling, i.structured_output, i.web_search, i.context_window, i.max_output_tokens, i.apis,
               i.shutdown_on, i.successor
        FROM jsonb_populate_record(NULL::model_catalogue, entry -> 'capabilities') i
        ON CONFLICT (model) DO UPDATE
        SET reasoning = EXCLUDED.reasoning, reasoning_efforts = EXCLUDED.reasoning_efforts,
            default_reasoning_effort = EXCLUDED.default_reasoning_effort, vision = EXCLUDED.vision,
            pdf_input = EXCLUDED.pdf_input, function_calling = EXCLUDED.function_calling,
            structured_output = EXCLUDED.structured_output, web_search = EXCLUDED.web_search,
            context_window = EXCLUDED.context_window, max_output_tokens = EXCLUDED.max_output_tokens,
            apis = EXCLUDED.apis, shutdown_on = EXCLUDED.shutdown_on, successor = EXCLUDED.successor,
            updated_at = now()
        WHERE (c.reasoning, c.reasoning_efforts, c.default_reasoning_effort, c.vision, c.pdf_input,
               c.function_calling, c.structured_output, c.web_search, c.context_window, c.max_output_tokens, c.apis,
               c.shutdown_on, c.successor)
              IS DISTINCT FROM
              (EXCLUDED.reasoning, EXCLUDED.reasoning_efforts, EXCLUDED.default_reasoning_effort, EXCLUDED.vision,
               EXCLUDED.pdf_input, EXCLUDED.function_calling, EXCLUDED.structured_output, EXCLUDED.web_search,
               EXCLUDED.context_window, EXCLUDED.max_output_tokens, EXCLUDED.apis, EXCLUDED.shutdown_on,
               EXCLUDED.successor);
        CONTINUE WHEN jsonb_typeof(entry -> 'prices') IS DISTINCT FROM 'object';

        incoming := jsonb_populate_record(NULL::model_pricing, entry -> 'prices');
        SELECT p.* INTO in_force FROM model_pricing p
        WHERE p.model = v_model AND p.effective_from <= p_effective_from
        ORDER BY p.effective_from DESC
        LIMIT 1;
        IF in_force.id IS NOT NULL
           AND (in_force.input_per_mtok, in_force.cached_input_per_mtok, in_force.cache_write_per_mtok,
                in_force.output_per_mtok, in_force.long_context_threshold, in_force.web_search_low_per_call,
                in_force.web_search_medium_per_call, in_force.web_search_high_per_call)
               IS NOT DISTINCT FROM
               (incoming.input_per_mtok, incoming.cached_input_per_mtok, incoming.cache_write_per_mtok,
                incoming.output_per_mtok, incoming.long_context_threshold, incoming.web_search_low_per_call,
                incoming.web_search_medium_per_call, incoming.web_search_high_per_call)
           AND NOT EXISTS (
               (SELECT r.service_tier, r.long_context, r.input_per_mtok, r.cached_input_per_mtok,
                       r.cache_write_per_mtok, r.output_per_mtok
                FROM model_pricing_rates r WHERE r.pricing_id = in_force.id
                EXCEPT
                SELECT n.service_tier, n.long_context, n.input_per_mtok, n.cached_input_per_mtok,
                       n.cache_write_per_mtok, n.output_per_mtok
                FROM jsonb_populate_recordset(NULL::model_pricing_rates, entry -> 'prices' -> 'rates') n)
               UNION ALL
               (SELECT n.service_tier, n.long_context, n.input_per_mtok, n.cached_input_per_mtok,
                       n.cache_write_per_mtok, n.output_per_mtok
                FROM jsonb_populate_recordset(NULL::model_pricing_rates, entry -> 'prices' -> 'rates') n
                EXCEPT
                SELECT r.service_tier, r.long_context, r.input_per_mtok, r.cached_input_per_mtok,
                       r.cache_write_per_mtok, r.output_per_mtok
                FROM model_pricing_rates r WHERE r.pricing_id = in_force.id)) THEN
            unchanged := unchanged + 1;
            CONTINUE;
        END IF;

        -- A model priced for the first time is priced from p_first_from, so replies recorded before the
        -- import read a price too; a new price of a priced model applies from p_effective_from on.
        since := CASE WHEN EXISTS (SELECT 1 FROM model_pricing p WHERE p.model = v_model) THEN p_effective_from
                      ELSE least(p_first_from, p_effective_from) END;
        INSERT INTO model_pricing AS p (
            model, input_per_mtok, cached_input_per_mtok, cache_write_per_mtok, output_per_mtok,
            long_context_threshold, web_search_low_per_call, web_search_medium_per_call, web_search_high_per_call,
            effective_from)
        VALUES (v_model, incoming.input_per_mtok, incoming.cached_input_per_mtok, incoming.cache_write_per_mtok,
                incoming.output_per_mtok, incoming.long_context_threshold, incoming.web_search_low_per_call,
                incoming.web_search_medium_per_call, incoming.web_search_high_per_call, since)
        -- Imported twice at the same time (an explicit --effective-from): the later import's prices.
        ON CONFLICT (model, effective_from) DO UPDATE
        SET input_per_mtok = EXCLUDED.input_per_mtok, cached_input_per_mtok = EXCLUDED.cached_input_per_mtok,
            cache_write_per_mtok = EXCLUDED.cache_write_per_mtok, output_per_mtok = EXCLUDED.output_per_mtok,
            long_context_threshold = EXCLUDED.long_context_threshold,
            web_search_low_per_call = EXCLUDED.web_search_low_per_call,
            web_search_medium_per_call = EXCLUDED.web_search_medium_per_call,
            web_search_high_per_call = EXCLUDED.web_search_high_per_call
        RETURNING p.id INTO new_id;
        DELETE FROM model_pricing_rates WHERE pricing_id = new_id;
        INSERT INTO model_pricing_rates (pricing_id, service_tier, long_context, input_per_mtok, cached_input_per_mtok,
                                         cache_write_per_mtok, output_per_mtok)
        SELECT new_id, n.service_tier, n.long_context, n.input_per_mtok, n.cached_input_per_mtok,
               n.cache_write_per_mtok, n.output_per_mtok
        FROM jsonb_populate_recordset(NULL::model_pricing_rates, entry -> 'prices' -> 'rates') n;

        IF in_force.id IS NULL THEN
            added := added || jsonb_build_object('model', v_model, 'input_per_mtok', incoming.input_per_mtok,
                                                 'output_per_mtok', incoming.output_per_mtok, 'effective_from', since);
        ELSE
            changed := changed || jsonb_build_object(
                'model', v_model, 'old_input_per_mtok', in_force.input_per_mtok,
                'input_per_mtok', incoming.input_per_mtok, 'old_output_per_mtok', in_force.output_per_mtok,
                'output_per_mtok', incoming.output_per_mtok, 'effective_from', since);
        END IF;
    END LOOP;
    RETURN jsonb_build_object('models', jsonb_array_length(p_models), 'added', added, 'changed', changed,
                              'unchanged', unchanged);
END
$$;

COMMENT ON FUNCTION import_model_catalogue(jsonb, timestamptz, timestamptz) IS
    'Import a catalogue (chalicelib/pricing.py normalises it: [{model, capabilities, prices}]): upsert each '
    'model''s capabilities, and add a price row only where its prices differ from the row in force at '
    'p_effective_from (every rate compared); a model with no price row yet is priced from p_first_from. Returns '
    '{models, added: [{model, input_per_mtok, output_per_mtok, effective_from}], changed: [{model, '
    'old_input_per_mtok, input_per_mtok, old_output_per_mtok, output_per_mtok, effective_from}], unchanged}.';
