using Microsoft.ML.OnnxRuntime;

namespace SdFunctions.Inference.Models;

/// <summary>
/// Final latents → an 8-bit RGB image: the full VAE in one decode (<see cref="VaeDecoderModel"/>), the full VAE tile by tile
/// (<see cref="TiledVaeDecoder"/>), or TAESD (a <see cref="VaeDecoderModel"/> of the tiny decoder). Chosen by name from a
/// pipeline's <see cref="Pipeline.DecoderCatalog"/>.
/// </summary>
public interface IImageDecoder : IDisposable
{
    /// <summary>The request's decoder name: full or tiny.</summary>
    string Name { get; }

    /// <summary>The tile side (image px) of a tiled decode; null for one whole decode.</summary>
    int? TileSize { get; }

    /// <summary>
    /// Decodes latents [1, C, <paramref name="latentHeight"/>, <paramref name="latentWidth"/>] as the pipeline makes them (the
    /// decoder divides by its own scaling factor) into HWC RGB bytes.
    /// </summary>
    byte[] DecodeToRgb(ReadOnlySpan<float> latents, int latentHeight, int latentWidth, RunOptions runOptions);

    /// <summary>How a decode of that size runs, in words ("whole", "9 tiles of 128 px").</summary>
    string Describe(int latentHeight, int latentWidth);
}
