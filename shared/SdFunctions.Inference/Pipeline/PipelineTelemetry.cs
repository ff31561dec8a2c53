using System.Diagnostics;

namespace SdFunctions.Inference.Pipeline;

/// <summary>
/// The pipeline's spans, per image: encoding the text, the denoise loop and decoding. Plain
/// System.Diagnostics activities, free when nobody listens; the Functions app exports them with OpenTelemetry.
/// </summary>
public static class PipelineTelemetry
{
    public const string SourceName = "SdFunctions.Inference";

    internal static readonly ActivitySource Source = new(SourceName);
}
