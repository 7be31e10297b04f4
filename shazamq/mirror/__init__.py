"""Built-in mirroring: topics of foreign Kafka clusters copied byte for byte at their offsets.

``selection`` decides which source topics and groups are mirrored (pure); ``source`` talks
to a source cluster (bootstrap, metadata, configs, offsets, groups); ``copier`` fetches a
set of partitions from one source broker and appends the batches verbatim; ``groups``
syncs committed offsets; ``service`` runs every source and is what the broker's
composition root starts and stops; ``local`` is the narrow view of the broker it uses.
"""
