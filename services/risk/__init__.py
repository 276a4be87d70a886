"""``shmpipe risk``: pre-trade checks between a strategy's order intents and the execution engine."""
