# Reads `go test -bench` output of the seal, store and ociserve packages
# and prints what encryption at rest costs, each sealed figure as a ratio
# against its plaintext baseline measured in the same run.
#   go test -run '^$' -bench . ./crfailoverd/internal/{seal,store,ociserve}/ | awk -f scripts/bench-table.awk
/^Benchmark/ {
	name = $1
	sub(/-[0-9]+$/, "", name)
	ns[name] = $3
	for (i = 4; i <= NF; i++) if ($(i+1) == "MB/s") mbs[name] = $i
}
function ms(n) { return sprintf("%.2f ms", ns[n] / 1e6) }
function row(what, base, x) {
	if (!(base in ns) || !(x in ns)) return
	printf "| %-46s | %12s | %12s | %5.2f |\n", what, ms(base), ms(x), ns[x] / ns[base]
}
END {
	print "| measure (time per operation)                   |    plaintext |       sealed | ratio |"
	print "|------------------------------------------------|--------------|--------------|-------|"
	row("64 MiB: memory copy vs encrypt", "BenchmarkCopy", "BenchmarkEncrypt")
	row("64 MiB: memory copy vs decrypt (stream)", "BenchmarkCopy", "BenchmarkDecrypt")
	row("64 MiB: memory copy vs decrypt (seekable)", "BenchmarkCopy", "BenchmarkDecryptAt")
	row("restore file of 2 MB: copy vs PlaintextFile", "BenchmarkRestoreCopyPlaintext/2MB", "BenchmarkRestorePlaintextFile/2MB")
	row("restore file of 100 MB: copy vs PlaintextFile", "BenchmarkRestoreCopyPlaintext/100MB", "BenchmarkRestorePlaintextFile/100MB")
	row("Commit of 2 MB", "BenchmarkCommit/plaintext/2MB", "BenchmarkCommit/sealed/2MB")
	row("Commit of 100 MB", "BenchmarkCommit/plaintext/100MB", "BenchmarkCommit/sealed/100MB")
	row("checkpoint image of the counter: build", "BenchmarkImage/counter/plain/build", "BenchmarkImage/counter/sealed/build")
	row("checkpoint image of the counter: serve", "BenchmarkImage/counter/plain/serve", "BenchmarkImage/counter/sealed/serve")
	row("checkpoint image of 100 MB: build", "BenchmarkImage/100MB/plain/build", "BenchmarkImage/100MB/sealed/build")
	row("checkpoint image of 100 MB: serve", "BenchmarkImage/100MB/plain/serve", "BenchmarkImage/100MB/sealed/serve")
	if ("BenchmarkEncrypt" in mbs) printf "\nencrypt %s MB/s, decrypt %s MB/s (stream), %s MB/s (seekable); memory copy %s MB/s\n", mbs["BenchmarkEncrypt"], mbs["BenchmarkDecrypt"], mbs["BenchmarkDecryptAt"], mbs["BenchmarkCopy"]
}
