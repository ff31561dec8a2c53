using System.Runtime.InteropServices;
using Google.Protobuf;
using Onnx;

namespace SdFunctions.Optimizer;

/// <summary>
/// Reads and writes ONNX models whose weights may live in external data files (optimum writes
/// <c>model.onnx_data</c> beside a UNet over 2 GB). Weights are read one tensor at a time, so a rewrite never holds
/// a whole multi-GB model in memory; on save every initializer of 1 KiB or more goes to one data file, each
/// tensor at a 4096-byte boundary so ONNX Runtime can memory-map it.
/// </summary>
public static class ModelFiles
{
    public const string DataFileName = "model.onnx_data";
    private const int ExternalThreshold = 1024, Alignment = 4096;

    /// <summary>The graph of <paramref name="path"/> with its external weights left where they are.</summary>
    public static async Task<ModelProto> ReadAsync(string path, CancellationToken ct) =>
        ModelProto.Parser.ParseFrom(await File.ReadAllBytesAsync(path, ct));

    public static bool IsExternal(TensorProto t) => t.DataLocation == TensorProto.Types.DataLocation.External;

    /// <summary>The data files an initializer of the graph points to, relative to the model's folder.</summary>
    public static IReadOnlySet<string> ExternalFiles(ModelProto model) =>
        model.Graph.Initializer.Where(IsExternal).Select(t => Entry(t, "location")!).ToHashSet(StringComparer.Ordinal);

    /// <summary>The bytes of all initializers' values (without file padding): the weights' size on disk.</summary>
    public static long InitializerBytes(ModelProto model) => model.Graph.Initializer.Sum(t =>
        IsExternal(t) ? long.Parse(Entry(t, "length") ?? "0") : t.RawData.Length + 4L * (t.FloatData.Count + t.Int32Data.Count) + 8L * t.Int64Data.Count);

    /// <summary>A float initializer's values, from wherever they are stored.</summary>
    public static float[] ReadFloats(TensorProto t, string modelDirectory)
    {
        if (t.DataType != (int)TensorProto.Types.DataType.Float)
            throw new InvalidOperationException($"Initializer {t.Name} is {(TensorProto.Types.DataType)t.DataType}, not float.");
        if (t.FloatData.Count > 0) return [.. t.FloatData];
        return MemoryMarshal.Cast<byte, float>(ReadBytes(t, modelDirectory)).ToArray();
    }

    private static byte[] ReadBytes(TensorProto t, string modelDirectory)
    {
        if (!IsExternal(t)) return t.RawData.ToByteArray();
        var (file, offset, length) = Location(t, modelDirectory);
        using var stream = File.OpenRead(file);
        stream.Position = offset;
        var bytes = new byte[length];
        stream.ReadExactly(bytes);
        return bytes;
    }

    /// <summary>
    /// Writes <paramref name="model"/> as <c>model.onnx</c> + <see cref="DataFileName"/> in <paramref name="targetDirectory"/>.
    /// Initializers still external are copied from their files under <paramref name="sourceDirectory"/> (which may be the
    /// target itself: the new data file is written aside and moved in last).
    /// </summary>
    public static async Task WriteAsync(ModelProto model, string sourceDirectory, string targetDirectory, CancellationToken ct)
    {
        Directory.CreateDirectory(targetDirectory);
        string dataPath = Path.Combine(targetDirectory, DataFileName), staging = dataPath + ".partial";
        var sources = new Dictionary<string, FileStream>(StringComparer.Ordinal);
        try
        {
            await using (var data = File.Create(staging))
            {
                foreach (var t in model.Graph.Initializer)
                {
                    ct.ThrowIfCancellationRequested();
                    var source = IsExternal(t) ? Location(t, sourceDirectory) : default;
                    long length = IsExternal(t) ? source.Length : t.RawData.Length;
                    if (length < ExternalThreshold && !IsExternal(t)) continue;
                    long offset = (data.Position + Alignment - 1) / Alignment * Alignment;
                    data.SetLength(offset);
                    data.Position = offset;
                    if (IsExternal(t))
                    {
                        if (!sources.TryGetValue(source.File, out var stream)) sources[source.File] = stream = File.OpenRead(source.File);
                        stream.Position = source.Offset;
                        await CopyRangeAsync(stream, data, length, ct);
                    }
                    else
                    {
                        if (t.FloatData.Count > 0) throw new InvalidOperationException($"Initializer {t.Name}: typed float_data is not supported; expected raw_data.");
                        await data.WriteAsync(t.RawData.Memory, ct);
                        t.RawData = ByteString.Empty;
                    }
                    t.DataLocation = TensorProto.Types.DataLocation.External;
                    t.ExternalData.Clear();
                    t.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = DataFileName });
                    t.ExternalData.Add(new StringStringEntryProto { Key = "offset", Value = offset.ToString() });
                    t.ExternalData.Add(new StringStringEntryProto { Key = "length", Value = length.ToString() });
                }
            }
        }
        finally
        {
            foreach (var s in sources.Values) await s.DisposeAsync();
        }
        File.Move(staging, dataPath, overwrite: true);
        await File.WriteAllBytesAsync(Path.Combine(targetDirectory, "model.onnx"), model.ToByteArray(), ct);
    }

    private static async Task CopyRangeAsync(Stream from, Stream to, long length, CancellationToken ct)
    {
        var buffer = new byte[1 << 20];
        while (length > 0)
        {
            int read = await from.ReadAsync(buffer.AsMemory(0, (int)Math.Min(buffer.Length, length)), ct);
            if (read == 0) throw new EndOfStreamException("An external weight file is shorter than the graph says.");
            await to.WriteAsync(buffer.AsMemory(0, read), ct);
            length -= read;
        }
    }

    private static (string File, long Offset, long Length) Location(TensorProto t, string modelDirectory)
    {
        string file = Path.Combine(modelDirectory, Entry(t, "location") ?? throw new InvalidOperationException($"Initializer {t.Name} is external but names no file."));
        if (!File.Exists(file)) throw new FileNotFoundException($"Initializer {t.Name}: its data file {file} is missing.", file);
        long offset = long.Parse(Entry(t, "offset") ?? "0");
        long length = Entry(t, "length") is { } l ? long.Parse(l) : new FileInfo(file).Length - offset;
        return (file, offset, length);
    }

    private static string? Entry(TensorProto t, string key) => t.ExternalData.FirstOrDefault(e => e.Key == key)?.Value;
}
