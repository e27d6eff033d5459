"""Input pipeline: image transforms, class-balanced cluster batches, tf.data."""
