-- wrk script: GET random `range_size`-byte ranges at unaligned offsets of an image of `image_size`
-- bytes; prints one JSON line of totals at the end. Args: image_size range_size [seed [no-ua]]
-- ("no-ua": send no User-Agent, as qemu's curl driver does).
local image_size, range_size, user_agent
function init(args)
  image_size = tonumber(args[1])
  range_size = tonumber(args[2])
  math.randomseed(tonumber(args[3] or "1") + os.time())
  user_agent = args[4] ~= "no-ua"
end
function request()
  local first = math.random(0, image_size - range_size)
  local headers = { ["Range"] = "bytes=" .. first .. "-" .. (first + range_size - 1) }
  if user_agent then headers["User-Agent"] = "wrk" end
  return wrk.format("GET", nil, headers)
end
function done(summary, latency, requests)
  io.write(string.format(
    '{"requests": %d, "bytes": %d, "seconds": %.6f, "errors": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.bytes, summary.duration / 1e6,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status
      + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
