"""The Fréchet distance family: streaming moments, the Gaussian they give, FID and FID∞, and
their metric plug-ins."""
