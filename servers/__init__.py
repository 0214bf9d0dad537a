"""The inference servers under test: one model module, one shared request layer, thin apps."""
