namespace SdFunctions.Functions;

/// <summary>Files the build embeds in the app (the OpenAPI document, the playground), served byte for byte.</summary>
internal static class EmbeddedFiles
{
    public static byte[] Read(string logicalName)
    {
        using var stream = typeof(EmbeddedFiles).Assembly.GetManifestResourceStream(logicalName)
            ?? throw new InvalidOperationException($"{logicalName} is not embedded in the app");
        using var copy = new MemoryStream();
        stream.CopyTo(copy);
        return copy.ToArray();
    }
}
