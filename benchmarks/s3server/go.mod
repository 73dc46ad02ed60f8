module dsbackup/benchmarks/s3server

go 1.19
