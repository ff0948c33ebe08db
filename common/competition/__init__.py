"""The competition's formats: the mask encoding of submissions and the cell-level metric."""
