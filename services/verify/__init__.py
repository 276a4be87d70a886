"""``shmpipe verify``: a consumer that checks a TICK ring's sequence and measures how late ticks
arrive; the demo's proof that nothing was lost."""
