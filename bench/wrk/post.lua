-- POST one prepared body on every request, then print wrk's summary as one JSON line.
-- Arguments after `--`: the body file and its Content-Type.
-- Example: wrk -c 8 -d 10s -s bench/wrk/post.lua http://127.0.0.1:8000/v1/embed -- body.multipart "multipart/form-data; boundary=..."

function init(args)
  if #args < 2 then
    error("usage: wrk ... -s post.lua URL -- BODY_FILE CONTENT_TYPE")
  end
  local file = assert(io.open(args[1], "rb"))
  wrk.method = "POST"
  wrk.body = file:read("*a")
  file:close()
  wrk.headers["Content-Type"] = args[2]
end

-- Runs once in the main thread, after every thread has stopped; latency is in microseconds.
function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '\nWRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"min": %d, "mean": %.1f, "stdev": %.1f, "max": %d, '
      .. '"p50": %d, "p90": %d, "p99": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)
  ))
end
