"""The pipeline's datasets: the catalog of the paper's tasks, their preparation from the sources, your
declared tasks, the demo's generated tasks, and a benchmark's split read from the data folders.

The stored format itself (uint8 image arrays, :class:`mass.data.store.SplitData`) is the library's."""
