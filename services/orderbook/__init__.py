"""The order book service: LevelUpdates from a levels ring -> one book per symbol -> OrderbookEntries
in a books ring, with Kraken checksum, crossed-book and gap checks and resnapshot requests to capture.
The hot path is compiled (_book.pyx); process.py is the process around it."""
