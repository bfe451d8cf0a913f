"""Quality: agreement with a reference (``evaluate``), impossible co-expression
(``coexpression``), tile seams (``seams``) and the checks of every run (``qc``)."""
