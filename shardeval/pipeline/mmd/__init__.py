"""Maximum mean discrepancies: KID (polynomial kernel) and CMMD (RBF on unit rows), exact
over all pairs, their finishes and plug-ins."""
