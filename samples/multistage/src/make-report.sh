#!/bin/sh
# Stands in for a compiler: turns the sources into one artifact.
echo "report version $1"
for f in *.txt; do
  echo "$f: $(wc -l < "$f") lines"
done
