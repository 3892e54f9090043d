"""/v1/artefacts: files a run produced (mined-pair images, reports), served to their owner."""
