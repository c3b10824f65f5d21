// Command s3-server is an in-memory S3 protocol server for the operator benchmark
// (tests/support/operator_bench.py): gofakes3 with its memory backend, buckets created on
// first use. It does in native code what moto's server does in Python, so on a small machine
// the benchmark's own S3 traffic leaves the cores to the control plane and the operator.
package main

import (
	"flag"
	"log"
	"net/http"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9000", "host:port to listen on")
	flag.Parse()
	faker := gofakes3.New(
		s3mem.New(),
		gofakes3.WithAutoBucket(true),
		gofakes3.WithLogger(gofakes3.DiscardLog()),
	)
	log.Printf("s3-server listening on %s", *addr)
	log.Fatal(http.ListenAndServe(*addr, faker.Server()))
}
