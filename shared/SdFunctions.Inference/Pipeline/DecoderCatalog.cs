using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Models;
using SdFunctions.Inference.Runtime;

namespace SdFunctions.Inference.Pipeline;

/// <summary>How a generation decodes: the decoder's name, and for the full VAE whether tile by tile (tile size null = the catalog's default).</summary>
public sealed record DecodePlan(string Decoder, bool Tiled = false, int? TileSize = null);

/// <summary>
/// The image decoders of one bundle at one latent size, created on first use and kept: each named decoder whole (full,
/// tiny), and the full VAE tiled at one tile size at a time (a request for another replaces it). The pipeline, its memory
/// plan and <c>sdf decode</c> get their decoders here.
/// </summary>
public sealed class DecoderCatalog(OnnxSessionFactory factory, ModelBundle bundle, int latentHeight, int latentWidth, int? defaultTileSize = null)
    : IDisposable
{
    private readonly Dictionary<string, VaeDecoderModel> _whole = [];
    private TiledVaeDecoder? _tiled;
    private readonly List<SessionLoadInfo> _loaded = [];

    /// <summary>The sessions created so far (whole decoders; a tiled decoder's session has free shapes and is not listed).</summary>
    public IReadOnlyList<SessionLoadInfo> Loaded => _loaded;

    /// <summary>The tile side a tiled decode without one uses: the setting, else the VAE config's sample_size (as diffusers), else the image's side.</summary>
    public int DefaultTileSize => defaultTileSize ?? FullVae.SampleSize ?? Math.Max(latentHeight, latentWidth) * bundle.VaeScaleFactor;

    private DecoderComponent FullVae => bundle.Decoders.FirstOrDefault(d => d.Name == DecoderComponent.Full)
        ?? throw new InvalidGenerationRequestException("tiledDecode", $"{bundle.Directory} has no full VAE decoder; tiled decoding needs AutoencoderKL.");

    public IImageDecoder Get(DecodePlan plan)
    {
        if (plan.Tiled) return Tiled(plan.TileSize ?? DefaultTileSize);
        if (_whole.TryGetValue(plan.Decoder, out var decoder)) return decoder;
        var component = bundle.Decoders.FirstOrDefault(d => d.Name == plan.Decoder)
            ?? throw new InvalidGenerationRequestException("decoder", $"This model has no '{plan.Decoder}' decoder. Choose one of: {string.Join(", ", bundle.Decoders.Select(d => d.Name))}.");
        decoder = new VaeDecoderModel(factory, bundle, component, latentHeight, latentWidth);
        _whole[plan.Decoder] = decoder;
        _loaded.Add(decoder.LoadInfo);
        return decoder;
    }

    private TiledVaeDecoder Tiled(int tileSize)
    {
        if (_tiled is { } current && current.TileSize == tileSize) return current;
        _tiled?.Dispose();
        _tiled = null; // a failed creation leaves none behind
        _tiled = new TiledVaeDecoder(factory, bundle, FullVae, tileSize);
        return _tiled;
    }

    public void Dispose()
    {
        foreach (var d in _whole.Values) d.Dispose();
        _whole.Clear();
        _tiled?.Dispose();
        _tiled = null;
    }
}
