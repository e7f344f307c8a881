-- wrk script for the side-by-side benchmarks: POSTs WRK_BODY (default "hello echo", 10 bytes),
-- adds the header line in the file WRK_HEADER_FILE if set (a bearer token stays off the command
-- line), and at the end writes the run as JSON to WRK_OUT: requests, seconds, errors by kind,
-- and latency percentiles in microseconds.
wrk.method = "POST"
wrk.body = os.getenv("WRK_BODY") or "hello echo"
wrk.headers["Content-Type"] = "application/octet-stream"

local header_file = os.getenv("WRK_HEADER_FILE")
if header_file and header_file ~= "" then
  local f = assert(io.open(header_file, "r"))
  local line = f:read("*l")
  f:close()
  local name, value = line:match("^([^:]+):%s*(.-)%s*$")
  assert(name, "WRK_HEADER_FILE must hold one 'Name: value' line")
  wrk.headers[name] = value
end

function done(summary, latency, requests)
  local out = assert(io.open(assert(os.getenv("WRK_OUT"), "WRK_OUT is not set"), "w"))
  local e = summary.errors
  out:write(string.format(
    '{"requests":%d,"seconds":%.6f,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration / 1e6, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
  out:close()
end
