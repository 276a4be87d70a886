"""``shmpipe alpaca-paper``: a local stand-in for Alpaca's paper trading API (REST v2 orders,
positions, account, and the ``trade_updates`` stream), with faults on purpose, for testing the
execution engine without a network or an account."""
