"""The books balance: every running total equals the sum of the rows it totals."""

from __future__ import annotations

import pg8000.native


def assert_books_balance(conn: pg8000.native.Connection) -> None:
    """Every session's totals equal the sum of its messages; each user's month spend and the analytics
    (rolled up plus queued) equal their recorded completions; every recorded turn has one reply."""
    sessions = conn.run(
        """SELECT s.id, s.message_count, s.prompt_tokens, s.completion_tokens, s.cached_tokens, s.reasoning_tokens,
                  s.total_cost_usd, s.last_seq,
                  count(m.id) FILTER (WHERE m.status = 'ok'), coalesce(sum(m.prompt_tokens), 0),
                  coalesce(sum(m.completion_tokens), 0), coalesce(sum(m.cached_tokens), 0),
                  coalesce(sum(m.reasoning_tokens), 0), coalesce(sum(m.cost_usd), 0), coalesce(max(m.seq), 0)
           FROM chat_sessions s LEFT JOIN chat_messages m ON m.session_id = s.id
           GROUP BY s.id
           HAVING (s.message_count, s.prompt_tokens, s.completion_tokens, s.cached_tokens, s.reasoning_tokens,
                   s.total_cost_usd, s.last_seq)
                  IS DISTINCT FROM
                  (count(m.id) FILTER (WHERE m.status = 'ok')::integer, coalesce(sum(m.prompt_tokens), 0),
                   coalesce(sum(m.completion_tokens), 0), coalesce(sum(m.cached_tokens), 0),
                   coalesce(sum(m.reasoning_tokens), 0), coalesce(sum(m.cost_usd), 0), coalesce(max(m.seq), 0))
           LIMIT 5"""
    )
    assert sessions == [], f"session totals that differ from their messages: {sessions}"
    months = conn.run(
        """WITH recorded AS (
               SELECT user_id, date_trunc('month', created_at AT TIME ZONE 'UTC')::date AS month,
                      count(*) AS requests, coalesce(sum(cost_usd), 0) AS cost_usd
               FROM chat_messages WHERE role = 'assistant' GROUP BY 1, 2)
           SELECT coalesce(r.user_id, m.user_id), coalesce(r.month, m.month), r.requests, m.requests, r.cost_usd,
                  m.cost_usd
           FROM recorded r FULL JOIN usage_monthly m ON m.user_id = r.user_id AND m.month = r.month
           WHERE (r.requests, r.cost_usd) IS DISTINCT FROM (m.requests, m.cost_usd)
           LIMIT 5"""
    )
    assert months == [], f"month spend that differs from the completions: {months}"
    analytics = conn.run(
        """WITH recorded AS (
               SELECT user_id, count(*) AS requests, coalesce(sum(cost_usd), 0) AS cost_usd
               FROM chat_messages WHERE role = 'assistant' GROUP BY 1),
           counted AS (
               SELECT user_id, sum(requests) AS requests, sum(cost_usd) AS cost_usd
               FROM (SELECT user_id, requests, cost_usd FROM usage_analytics
                     UNION ALL SELECT user_id, 1, coalesce(cost_usd, 0) FROM usage_pending) u
               GROUP BY 1)
           SELECT coalesce(r.user_id, c.user_id), r.requests, c.requests, r.cost_usd, c.cost_usd
           FROM recorded r FULL JOIN counted c ON c.user_id = r.user_id
           WHERE (r.requests, r.cost_usd) IS DISTINCT FROM (c.requests, c.cost_usd)
           LIMIT 5"""
    )
    assert analytics == [], f"analytics that differ from the completions: {analytics}"
    turns = conn.run(
        """SELECT t.turn_id, count(m.id)
           FROM completion_turns t LEFT JOIN chat_messages m ON m.turn_id = t.turn_id AND m.role = 'assistant'
           GROUP BY t.turn_id HAVING count(m.id) <> 1
           LIMIT 5"""
    )
    assert turns == [], f"turns recorded other than once: {turns}"
