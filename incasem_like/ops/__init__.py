"""Pure numpy functions, each with its dtypes stated: CLAHE, morphology, connected components, surfaces,
downsampling and metrics. They know nothing of datasets, blocks or runs; the stages cut volumes into blocks and call
them."""
