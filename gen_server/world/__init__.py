"""Building the anchored world state from footage: readers, depth, fusion, storage."""
