using System.Text;

namespace SdFunctions.Inference.Onnx;

/// <summary>ONNX tensor element types we care about (values from onnx.proto TensorProto.DataType).</summary>
public enum OnnxElementType
{
    Undefined = 0, Float = 1, UInt8 = 2, Int8 = 3, UInt16 = 4, Int16 = 5, Int32 = 6, Int64 = 7,
    String = 8, Bool = 9, Float16 = 10, Double = 11, UInt32 = 12, UInt64 = 13, BFloat16 = 16,
}

/// <summary>One dimension of a graph input or output: a fixed size, a named free dimension, or unknown.</summary>
public readonly record struct OnnxDim(long? Value, string? Param)
{
    public override string ToString() => Value?.ToString() ?? Param ?? "?";
}

/// <summary>A graph input or output as the model file declares it.</summary>
public sealed record OnnxValueInfo(string Name, OnnxElementType ElementType, IReadOnlyList<OnnxDim> Dims)
{
    public override string ToString() => $"{Name}: {ElementType.ToString().ToLowerInvariant()} [{string.Join(", ", Dims)}]";
}

/// <summary>
/// What an ONNX file declares: its inputs, outputs, opsets and the external data files its weights live in.
/// Read by streaming the protobuf and seeking past weights, so it costs milliseconds even for a multi-GB
/// model. We need it before a session exists: free-dimension overrides must be set on the session
/// options by the model's own dim names, and a missing external data file must be reported by name.
/// </summary>
public sealed class OnnxModelInfo
{
    public required string Path { get; init; }
    public required IReadOnlyList<OnnxValueInfo> Inputs { get; init; }
    public required IReadOnlyList<OnnxValueInfo> Outputs { get; init; }
    public required IReadOnlyDictionary<string, long> OpsetImports { get; init; }
    public required IReadOnlyCollection<string> ExternalDataFiles { get; init; }

    /// <summary>The operator types the main graph uses (not its subgraphs'): e.g. whether an encoder samples noise inside.</summary>
    public required IReadOnlySet<string> OpTypes { get; init; }

    public OnnxValueInfo? FindInput(string name) => Inputs.FirstOrDefault(i => i.Name == name);

    public static OnnxModelInfo Read(string path)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        var reader = new ProtoReader(stream);
        var inputs = new List<OnnxValueInfo>();
        var outputs = new List<OnnxValueInfo>();
        var opsets = new Dictionary<string, long>();
        var external = new HashSet<string>(StringComparer.Ordinal);
        var initializerNames = new HashSet<string>(StringComparer.Ordinal);
        var opTypes = new HashSet<string>(StringComparer.Ordinal);
        bool sawGraph = false;

        // ModelProto: 7 = graph, 8 = opset_import.
        while (reader.TryReadTag(stream.Length, out int field, out int wire))
        {
            if (field == 7 && wire == 2)
            {
                sawGraph = true;
                long end = reader.ReadLength() + stream.Position;
                // GraphProto: 1 = node, 5 = initializer, 11 = input, 12 = output.
                while (reader.TryReadTag(end, out int gField, out int gWire))
                {
                    if (gWire == 2 && gField == 1)
                    {
                        long nEnd = reader.ReadLength() + stream.Position;
                        // NodeProto: 4 = op_type.
                        while (reader.TryReadTag(nEnd, out int nField, out int nWire))
                        {
                            if (nField == 4 && nWire == 2) opTypes.Add(reader.ReadString());
                            else reader.Skip(nWire);
                        }
                    }
                    else if (gWire == 2 && gField is 11 or 12)
                    {
                        long vEnd = reader.ReadLength() + stream.Position;
                        (gField == 11 ? inputs : outputs).Add(ReadValueInfo(reader, vEnd));
                    }
                    else if (gWire == 2 && gField == 5)
                    {
                        long tEnd = reader.ReadLength() + stream.Position;
                        ReadInitializer(reader, tEnd, external, initializerNames);
                    }
                    else reader.Skip(gWire);
                }
            }
            else if (field == 8 && wire == 2)
            {
                long end = reader.ReadLength() + stream.Position;
                string domain = ""; long version = 0;
                while (reader.TryReadTag(end, out int oField, out int oWire))
                {
                    if (oField == 1 && oWire == 2) domain = reader.ReadString();
                    else if (oField == 2 && oWire == 0) version = (long)reader.ReadVarint();
                    else reader.Skip(oWire);
                }
                opsets[domain] = version;
            }
            else reader.Skip(wire);
        }
        if (!sawGraph || inputs.Count == 0)
            throw new InvalidDataException($"{path} is not an ONNX model: no graph with inputs was found in it.");

        // Models older than IR 4 list their initializers as inputs too; those are not inputs to feed.
        inputs.RemoveAll(i => initializerNames.Contains(i.Name));
        return new OnnxModelInfo { Path = path, Inputs = inputs, Outputs = outputs, OpsetImports = opsets, ExternalDataFiles = external, OpTypes = opTypes };
    }

    private static OnnxValueInfo ReadValueInfo(ProtoReader r, long end)
    {
        string name = ""; var type = OnnxElementType.Undefined; var dims = new List<OnnxDim>();
        // ValueInfoProto: 1 = name, 2 = type. TypeProto: 1 = tensor_type. Tensor: 1 = elem_type, 2 = shape.
        while (r.TryReadTag(end, out int f, out int w))
        {
            if (f == 1 && w == 2) name = r.ReadString();
            else if (f == 2 && w == 2)
            {
                long typeEnd = r.ReadLength() + r.Position;
                while (r.TryReadTag(typeEnd, out int tf, out int tw))
                {
                    if (tf != 1 || tw != 2) { r.Skip(tw); continue; }
                    long tensorEnd = r.ReadLength() + r.Position;
                    while (r.TryReadTag(tensorEnd, out int ef, out int ew))
                    {
                        if (ef == 1 && ew == 0) type = (OnnxElementType)(int)r.ReadVarint();
                        else if (ef == 2 && ew == 2) ReadShape(r, r.ReadLength() + r.Position, dims);
                        else r.Skip(ew);
                    }
                }
            }
            else r.Skip(w);
        }
        return new OnnxValueInfo(name, type, dims);
    }

    private static void ReadShape(ProtoReader r, long end, List<OnnxDim> dims)
    {
        // TensorShapeProto: 1 = dim. Dimension: 1 = dim_value, 2 = dim_param.
        while (r.TryReadTag(end, out int f, out int w))
        {
            if (f != 1 || w != 2) { r.Skip(w); continue; }
            long dimEnd = r.ReadLength() + r.Position;
            long? value = null; string? param = null;
            while (r.TryReadTag(dimEnd, out int df, out int dw))
            {
                if (df == 1 && dw == 0) value = (long)r.ReadVarint();
                else if (df == 2 && dw == 2) param = r.ReadString();
                else r.Skip(dw);
            }
            dims.Add(new OnnxDim(value, string.IsNullOrEmpty(param) ? null : param));
        }
    }

    private static void ReadInitializer(ProtoReader r, long end, HashSet<string> external, HashSet<string> names)
    {
        // TensorProto: 8 = name, 13 = external_data (key/value entries), 14 = data_location (1 = EXTERNAL).
        while (r.TryReadTag(end, out int f, out int w))
        {
            if (f == 8 && w == 2) names.Add(r.ReadString());
            else if (f == 13 && w == 2)
            {
                long entryEnd = r.ReadLength() + r.Position;
                string key = "", value = "";
                while (r.TryReadTag(entryEnd, out int ef, out int ew))
                {
                    if (ef == 1 && ew == 2) key = r.ReadString();
                    else if (ef == 2 && ew == 2) value = r.ReadString();
                    else r.Skip(ew);
                }
                if (key == "location" && value.Length > 0) external.Add(value);
            }
            else r.Skip(w);
        }
    }

    /// <summary>Just enough protobuf wire-format reading for the fields above.</summary>
    private sealed class ProtoReader(Stream stream)
    {
        public long Position => stream.Position;

        public bool TryReadTag(long end, out int field, out int wire)
        {
            field = wire = 0;
            if (stream.Position >= end) return false;
            ulong tag = ReadVarint();
            field = (int)(tag >> 3);
            wire = (int)(tag & 7);
            return true;
        }

        public ulong ReadVarint()
        {
            ulong result = 0;
            for (int shift = 0; shift < 64; shift += 7)
            {
                int b = stream.ReadByte();
                if (b < 0) throw new InvalidDataException("Truncated ONNX file (a varint runs past the end).");
                result |= (ulong)(b & 0x7F) << shift;
                if ((b & 0x80) == 0) return result;
            }
            throw new InvalidDataException("Malformed ONNX file (a varint is longer than 10 bytes).");
        }

        public long ReadLength()
        {
            long length = (long)ReadVarint();
            if (length < 0 || stream.Position + length > stream.Length)
                throw new InvalidDataException("Truncated ONNX file (a field runs past the end of the file).");
            return length;
        }

        public string ReadString()
        {
            var bytes = new byte[ReadLength()];
            stream.ReadExactly(bytes);
            return Encoding.UTF8.GetString(bytes);
        }

        public void Skip(int wire)
        {
            switch (wire)
            {
                case 0: ReadVarint(); break;
                case 1: stream.Seek(8, SeekOrigin.Current); break;
                case 2: long n = ReadLength(); stream.Seek(n, SeekOrigin.Current); break;
                case 5: stream.Seek(4, SeekOrigin.Current); break;
                default: throw new InvalidDataException($"Malformed ONNX file (unsupported protobuf wire type {wire}).");
            }
        }
    }
}
