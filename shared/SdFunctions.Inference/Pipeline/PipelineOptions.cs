using SdFunctions.Inference.Runtime;

namespace SdFunctions.Inference.Pipeline;

/// <summary>How a pipeline is loaded: its one static image size and the ONNX Runtime settings.</summary>
public sealed record PipelineOptions
{
    /// <summary>Image size the sessions are compiled for; null = the bundle's native size (512 for SD 1.x).</summary>
    public int? Width { get; init; }
    public int? Height { get; init; }

    public SessionSettings Session { get; init; } = new();

    /// <summary>
    /// The decoder requests get when they name none, loaded with the pipeline (others load when first asked for):
    /// full or tiny; null = the full VAE when the bundle has one.
    /// </summary>
    public string? DefaultDecoder { get; init; }

    /// <summary>
    /// Run each model once at load time. The first runs after load are 2–4× slower (weights paging in,
    /// arena growth); paying that at load keeps it off the first user's request.
    /// </summary>
    public bool WarmUp { get; init; } = true;
}
