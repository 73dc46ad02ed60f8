"""The Go tool's archive format (docs/GOFORMAT.md): read, verify, inspect, list, restore and
write archives that the Go tool dsbackup re-imagines reads and writes."""
