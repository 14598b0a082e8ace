"""Budget machinery used by the `[[budgets]]` policy: calendar periods, rules, alerts, admin API."""
