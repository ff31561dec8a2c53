using System.Collections.Concurrent;
using System.Globalization;
using System.Text;
using System.Text.Json;

namespace SdFunctions.Inference.Text;

/// <summary>The 77 ids the text encoder takes, and whether the prompt had to be cut to fit.</summary>
public sealed record TokenizedPrompt(int[] Ids, bool Truncated, int UntruncatedLength);

/// <summary>
/// CLIP's byte-level BPE tokenizer, read from a bundle's <c>tokenizer/</c> folder (vocab.json, merges.txt,
/// tokenizer_config.json). Produces exactly the ids of transformers' CLIPTokenizer with ftfy installed
/// (= openai/CLIP's tokenizer): clean-up, CLIP's pre-tokenizer, BPE with <c>&lt;/w&gt;</c>, bos/eos,
/// truncation keeping eos last, padding with the bundle's pad token. Thread-safe.
/// </summary>
public sealed class ClipTokenizer
{
    private readonly Dictionary<string, int> _vocab;
    private readonly Dictionary<(string, string), int> _mergeRanks;
    private readonly ConcurrentDictionary<string, string[]> _bpeCache = new(StringComparer.Ordinal);
    private static readonly char[] ByteToChar = BuildByteToUnicode();

    public int MaxLength { get; }
    public int BosId { get; }
    public int EosId { get; }
    public int PadId { get; }
    public string BosToken { get; }
    public string EosToken { get; }

    private ClipTokenizer(Dictionary<string, int> vocab, Dictionary<(string, string), int> ranks, int maxLength,
        string bos, string eos, string pad)
    {
        _vocab = vocab;
        _mergeRanks = ranks;
        MaxLength = maxLength;
        BosToken = bos;
        EosToken = eos;
        BosId = Id(bos, "bos_token");
        EosId = Id(eos, "eos_token");
        PadId = Id(pad, "pad_token");

        int Id(string token, string role) => vocab.TryGetValue(token, out int id)
            ? id : throw new InvalidDataException($"tokenizer: the {role} '{token}' is not in vocab.json.");
    }

    /// <summary>Loads the tokenizer from a folder laid out as transformers' save_pretrained writes it.</summary>
    public static ClipTokenizer Load(string directory)
    {
        string vocabPath = Path.Combine(directory, "vocab.json");
        string mergesPath = Path.Combine(directory, "merges.txt");
        string configPath = Path.Combine(directory, "tokenizer_config.json");

        Dictionary<string, int>? vocab;
        try { vocab = JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllText(vocabPath)); }
        catch (JsonException e)
        {
            // The serializer's own text names .NET types; say what the file should hold instead.
            throw new InvalidDataException($"{vocabPath}: not a CLIP vocabulary (a JSON object of token → whole-number id); the problem is at line {e.LineNumber + 1}, byte {e.BytePositionInLine + 1}.", e);
        }
        if (vocab is null) throw new InvalidDataException($"{vocabPath}: expected a JSON object of token → id.");

        var ranks = new Dictionary<(string, string), int>();
        foreach (string line in File.ReadLines(mergesPath))
        {
            if (line.StartsWith("#version", StringComparison.Ordinal) || line.Length == 0) continue;
            int space = line.IndexOf(' ');
            if (space <= 0) throw new InvalidDataException($"{mergesPath}: line {ranks.Count + 2} is not a 'left right' merge.");
            ranks.TryAdd((line[..space], line[(space + 1)..]), ranks.Count);
        }

        int maxLength = 77;
        string bos = "<|startoftext|>", eos = "<|endoftext|>", pad = eos;
        if (File.Exists(configPath))
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(configPath));
            var root = doc.RootElement;
            if (root.TryGetProperty("model_max_length", out var m) && m.ValueKind == JsonValueKind.Number && m.TryGetInt32(out int ml) && ml is > 2 and <= 4096)
                maxLength = ml;
            bos = TokenContent(root, "bos_token") ?? bos;
            eos = TokenContent(root, "eos_token") ?? eos;
            pad = TokenContent(root, "pad_token") ?? eos;
        }
        return new ClipTokenizer(vocab, ranks, maxLength, bos, eos, pad);
    }

    // A special token is written either as a plain string or as an AddedToken object with "content".
    private static string? TokenContent(JsonElement root, string name) =>
        !root.TryGetProperty(name, out var t) ? null
        : t.ValueKind == JsonValueKind.String ? t.GetString()
        : t.ValueKind == JsonValueKind.Object && t.TryGetProperty("content", out var c) ? c.GetString()
        : null;

    /// <summary>Tokenizes as SD pipelines call the tokenizer: padding to max length, truncation on.</summary>
    public TokenizedPrompt Encode(string text)
    {
        List<int> body = EncodeBody(text);
        int room = MaxLength - 2;
        bool truncated = body.Count > room;
        var ids = new int[MaxLength];
        ids[0] = BosId;
        int n = Math.Min(body.Count, room);
        body.CopyTo(0, ids, 1, n);
        ids[n + 1] = EosId;
        Array.Fill(ids, PadId, n + 2, MaxLength - n - 2);
        return new TokenizedPrompt(ids, truncated, body.Count + 2);
    }

    /// <summary>The ids between bos and eos, untruncated.</summary>
    public List<int> EncodeBody(string text)
    {
        string cleaned = ClipTextCleaner.Clean(text);
        var ids = new List<int>();
        foreach (string word in PreTokenize(cleaned))
        {
            if (word == BosToken) { ids.Add(BosId); continue; }
            if (word == EosToken) { ids.Add(EosId); continue; }
            foreach (string piece in Bpe(word))
                ids.Add(_vocab.TryGetValue(piece, out int id) ? id : EosId); // CLIP's unk token is <|endoftext|>
        }
        return ids;
    }

    /// <summary>
    /// CLIP's pre-tokenizer regex, <c>&lt;|startoftext|&gt;|&lt;|endoftext|&gt;|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+</c>,
    /// as a scanner over code points: .NET's regex classes see UTF-16 units, so letters outside the
    /// BMP would not count as \p{L} there as they do in Python's regex module.
    /// </summary>
    internal IEnumerable<string> PreTokenize(string text)
    {
        int i = 0;
        while (i < text.Length)
        {
            if (StartsWithAt(text, i, BosToken)) { yield return BosToken; i += BosToken.Length; continue; }
            if (StartsWithAt(text, i, EosToken)) { yield return EosToken; i += EosToken.Length; continue; }
            if (text[i] == '\'')
            {
                string? contraction = Contractions.FirstOrDefault(c => StartsWithAt(text, i, c));
                if (contraction is not null) { yield return contraction; i += contraction.Length; continue; }
            }
            var kind = Classify(text, i, out int width);
            if (kind == CharKind.Space) { i += width; continue; }
            if (kind == CharKind.Number) { yield return text.Substring(i, width); i += width; continue; }
            int start = i;
            do { i += width; } while (i < text.Length && Classify(text, i, out width) == kind);
            yield return text[start..i];
        }
    }

    private static readonly string[] Contractions = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"];

    private static bool StartsWithAt(string text, int index, string value) =>
        index + value.Length <= text.Length && string.CompareOrdinal(text, index, value, 0, value.Length) == 0;

    private enum CharKind { Letter, Number, Space, Other }

    private static CharKind Classify(string text, int index, out int width)
    {
        if (Rune.DecodeFromUtf16(text.AsSpan(index), out Rune rune, out width) != System.Buffers.OperationStatus.Done)
            return CharKind.Other; // a lone surrogate: not a letter, number or space
        if (Rune.IsWhiteSpace(rune) || rune.Value is >= 0x1C and <= 0x1F) return CharKind.Space;
        return Rune.GetUnicodeCategory(rune) switch
        {
            UnicodeCategory.UppercaseLetter or UnicodeCategory.LowercaseLetter or UnicodeCategory.TitlecaseLetter
                or UnicodeCategory.ModifierLetter or UnicodeCategory.OtherLetter => CharKind.Letter,
            UnicodeCategory.DecimalDigitNumber or UnicodeCategory.LetterNumber or UnicodeCategory.OtherNumber => CharKind.Number,
            _ => CharKind.Other,
        };
    }

    /// <summary>Byte-level BPE of one pre-token: its UTF-8 bytes as printable characters, merged by rank.</summary>
    internal string[] Bpe(string word) => _bpeCache.GetOrAdd(word, static (w, self) => self.BpeUncached(w), this);

    private string[] BpeUncached(string word)
    {
        byte[] utf8 = Encoding.UTF8.GetBytes(word);
        var symbols = new List<string>(utf8.Length);
        foreach (byte b in utf8) symbols.Add(ByteToChar[b].ToString());
        symbols[^1] += "</w>";

        while (symbols.Count > 1)
        {
            int best = -1, bestRank = int.MaxValue;
            for (int k = 0; k < symbols.Count - 1; k++)
                if (_mergeRanks.TryGetValue((symbols[k], symbols[k + 1]), out int rank) && rank < bestRank)
                    (best, bestRank) = (k, rank);
            if (best < 0) break;

            // Merge every occurrence of the best pair, left to right, as CLIP's bpe() does.
            string first = symbols[best], second = symbols[best + 1];
            var merged = new List<string>(symbols.Count);
            for (int k = 0; k < symbols.Count; k++)
            {
                if (k < symbols.Count - 1 && symbols[k] == first && symbols[k + 1] == second)
                {
                    merged.Add(first + second);
                    k++;
                }
                else merged.Add(symbols[k]);
            }
            symbols = merged;
        }
        return [.. symbols];
    }

    // GPT-2/CLIP bytes_to_unicode: printable bytes map to themselves, the rest to U+0100 onwards.
    private static char[] BuildByteToUnicode()
    {
        var map = new char[256];
        int next = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF;
            map[b] = printable ? (char)b : (char)(256 + next++);
        }
        return map;
    }
}
