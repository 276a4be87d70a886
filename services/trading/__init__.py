"""What the strategy, the risk manager, the execution engine and the venue emulator share: the order
intent's schema and topics on the signals bus, exact decimal money, and marks from the books ring."""
