"""What recipes compose: process setup, the model from a checkpoint, data, resume, saving, run records.

``run`` is the top library room: it may import every other room except ``cli``; recipes call
its functions with flat arguments (objects, paths, numbers), never a whole config.

- :mod:`~tunekit.run.process`: process group, its teardown, device checks;
- :mod:`~tunekit.run.settings`: the loop's settings from a config (defaults from the schema);
- :mod:`~tunekit.run.model`: the model built on the meta device with the checkpoint's weights;
- :mod:`~tunekit.run.data`: data splits and loaders;
- :mod:`~tunekit.run.resume`: find, check and restore a checkpoint (the one home of resume);
- :mod:`~tunekit.run.saver`: the loop's saver;
- :mod:`~tunekit.run.records`: run directory guard, run info, start line, result;
- :mod:`~tunekit.run.errors`: bad input as one paragraph.
"""
