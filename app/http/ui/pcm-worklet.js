// AudioWorklet: hands the microphone's first channel to the page in pieces of 20 ms. The audio thread
// delivers 128 samples at a time (one WebSocket message per 128 would be ~375/s); larger pieces add
// latency: the server's resampler holds back its filter's tail until the next piece arrives, so a
// frame waits for one more piece (bench/stream.py: ~110 ms with 100 ms pieces, ~27 ms with 20 ms).
class PcmTap extends AudioWorkletProcessor {
  constructor() {
    super();
    this.size = Math.round(sampleRate / 50);
    this.buffer = new Float32Array(this.size);
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) {
      let offset = 0;
      while (offset < channel.length) {
        const n = Math.min(channel.length - offset, this.size - this.filled);
        this.buffer.set(channel.subarray(offset, offset + n), this.filled);
        this.filled += n;
        offset += n;
        if (this.filled === this.size) {
          this.port.postMessage(this.buffer.slice(0));
          this.filled = 0;
        }
      }
    }
    return true;
  }
}

registerProcessor("pcm-tap", PcmTap);
