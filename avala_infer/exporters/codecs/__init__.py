"""Format codecs the writers share: COCO RLE, Label Studio brush RLE, mask polygons."""
