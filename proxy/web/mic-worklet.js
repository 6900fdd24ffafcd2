// The microphone as 24 kHz 16-bit PCM, in 40 ms frames, for a realtime session.
// An AudioWorklet runs on the audio thread: it low-passes the context's own
// rate (often 48 kHz) below 12 kHz, so nothing folds into the speech band,
// resamples to 24 kHz, and posts each frame to the page as an Int16Array.
"use strict";

const OUT_RATE = 24000;
const FRAME = 960; // 40 ms at 24 kHz
const TAPS = 31;

function lowPass(cutoff) {
  // A windowed-sinc FIR, cutoff as a fraction of the input rate.
  const taps = new Float32Array(TAPS);
  const middle = (TAPS - 1) / 2;
  let sum = 0;
  for (let n = 0; n < TAPS; n++) {
    const x = n - middle;
    const sinc = x === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * x) / (Math.PI * x);
    const window = 0.54 - 0.46 * Math.cos((2 * Math.PI * n) / (TAPS - 1));
    taps[n] = sinc * window;
    sum += taps[n];
  }
  for (let n = 0; n < TAPS; n++) taps[n] /= sum;
  return taps;
}

class MicrophonePcm extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / OUT_RATE; // input samples per output sample
    this.taps = this.step > 1 ? lowPass(0.45 / this.step) : null;
    this.history = new Float32Array(TAPS); // the last inputs, for the filter
    this.filtered = []; // filtered inputs not yet used
    this.position = 0; // where the next output falls among them
    this.frame = new Int16Array(FRAME);
    this.filled = 0;
  }

  filter(sample) {
    if (!this.taps) return sample;
    this.history.copyWithin(0, 1);
    this.history[TAPS - 1] = sample;
    let out = 0;
    for (let n = 0; n < TAPS; n++) out += this.history[n] * this.taps[n];
    return out;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    for (let i = 0; i < channel.length; i++) this.filtered.push(this.filter(channel[i]));
    while (this.position + 1 < this.filtered.length) {
      const at = Math.floor(this.position);
      const fraction = this.position - at;
      const value = this.filtered[at] * (1 - fraction) + this.filtered[at + 1] * fraction;
      this.frame[this.filled++] = Math.max(-32768, Math.min(32767, Math.round(value * 32767)));
      if (this.filled === FRAME) {
        this.port.postMessage(this.frame.slice(0));
        this.filled = 0;
      }
      this.position += this.step;
    }
    const used = Math.floor(this.position);
    this.filtered = this.filtered.slice(used);
    this.position -= used;
    return true;
  }
}

registerProcessor("microphone-pcm", MicrophonePcm);
