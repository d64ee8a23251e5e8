-- Prices: which price row a model is billed at, and what a usage costs.
-- The current definition; `migrate` re-applies this file whenever it changes (README: Development).

CREATE OR REPLACE FUNCTION pricing_model_name(p_model text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    -- gpt-4o-2024-08-06 -> gpt-4o, gpt-4-0613 -> gpt-4
    SELECT regexp_replace(p_model, '-(\d{4}-\d{2}-\d{2}|\d{4})$', '')
$$;

COMMENT ON FUNCTION pricing_model_name(text) IS 'The base model a dated snapshot name is priced as.';

CREATE OR REPLACE FUNCTION price_in_force(p_model text, p_at timestamptz) RETURNS model_pricing
LANGUAGE sql STABLE AS $$
    SELECT p.* FROM model_pricing p
    WHERE p.model IN (p_model, pricing_model_name(p_model)) AND p.effective_from <= p_at
    ORDER BY (p.model = p_model) DESC, p.effective_from DESC
    LIMIT 1
$$;

COMMENT ON FUNCTION price_in_force(text, timestamptz) IS
    'The price row of a model (exact name first, else its base model) in force at a time; NULL if none.';

CREATE OR REPLACE FUNCTION message_cost(p_price model_pricing, p_prompt integer, p_cached integer, p_completion integer)
RETURNS numeric
LANGUAGE sql IMMUTABLE AS $$
    SELECT ((p_prompt - p_cached) * p_price.input_per_mtok
            + p_cached * coalesce(p_price.cached_input_per_mtok, p_price.input_per_mtok)
            + p_completion * p_price.output_per_mtok) / 1000000
$$;

COMMENT ON FUNCTION message_cost(model_pricing, integer, integer, integer) IS
    'USD for a usage: uncached prompt at input price, cached at cached-input price, completion (reasoning included) at output price.';
