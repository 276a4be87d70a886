"""``shmpipe execute``: approved order intents -> orders at Alpaca (or the local emulator), never
twice, with a durable journal, retries, a rate limit, slippage protection and a kill switch."""
