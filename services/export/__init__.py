"""Export (issue 26): raw .wslog captures, replayed through capture's own parsers, and the tick journal
-> datasets for the tools people backtest with.

    source             the replay: book, trade and tick rows with message boundaries, implied deletes
    parquet_target     typed, partitioned Parquet tables (pyarrow)
    hftbacktest_target hftbacktest event arrays (.npz), one file per symbol per day
    nautilus_target    a NautilusTrader ParquetDataCatalog (instruments, OrderBookDelta, TradeTick)
    exporter           inputs, the output folder (--overwrite), progress, the summary
The three targets need ``pip install 'shmpipe[export]'``.
"""
