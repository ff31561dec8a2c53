using System.Text.Json;
using SdFunctions.Inference.Text;

namespace SdFunctions.Inference.Tests;

/// <summary>The CLIP tokenizer against transformers' CLIPTokenizer with ftfy (= openai/CLIP) on 43 prompts.</summary>
public class TokenizerTests
{
    private static readonly ClipTokenizer Tokenizer = ClipTokenizer.Load(Path.Combine(Fixtures.TinySd, "tokenizer"));
    private static readonly JsonElement[] Items = Fixtures.Index("tokenizer").GetProperty("items").EnumerateArray().ToArray();

    public static TheoryData<int> PromptIndexes()
    {
        var data = new TheoryData<int>();
        for (int i = 0; i < Items.Length; i++) data.Add(i);
        return data;
    }

    [Theory, MemberData(nameof(PromptIndexes))]
    public void IdsMatchTransformersWithFtfyExactly(int index)
    {
        var item = Items[index];
        string prompt = item.GetProperty("prompt").GetString()!;
        int[] expected = item.GetProperty("ids_hf_slow_ftfy").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        int untruncated = item.GetProperty("untruncated_hf_slow_ftfy").GetArrayLength();

        var actual = Tokenizer.Encode(prompt);

        Assert.Equal(expected, actual.Ids);
        Assert.Equal(untruncated, actual.UntruncatedLength);
        Assert.Equal(untruncated > 77, actual.Truncated);
    }

    [Fact]
    public void SpecialTokensAndLengthComeFromTheBundle()
    {
        Assert.Equal(49406, Tokenizer.BosId);
        Assert.Equal(49407, Tokenizer.EosId);
        Assert.Equal(49407, Tokenizer.PadId);
        Assert.Equal(77, Tokenizer.MaxLength);
    }

    [Fact]
    public void LongPromptsAreCutWithEosLastAndReported()
    {
        var t = Tokenizer.Encode(string.Join(' ', Enumerable.Repeat("castle", 120)));
        Assert.True(t.Truncated);
        Assert.Equal(122, t.UntruncatedLength);
        Assert.Equal(77, t.Ids.Length);
        Assert.Equal(Tokenizer.EosId, t.Ids[^1]);
        Assert.Equal(Tokenizer.BosId, t.Ids[0]);
    }

    [Theory]
    [InlineData("doesnâ€™t", "doesn't")]
    [InlineData("ﬁne ﬂower", "fine flower")]
    [InlineData("ＡＢＣ１２３", "ABC123")]
    [InlineData("&amp;amp; &lt;3", "& <3")]
    [InlineData("<b>&amp;</b>", "<b>&amp;</b>")]
    [InlineData("“quoted” ‘single’", "\"quoted\" 'single'")]
    [InlineData("cafe\u0301", "café")]
    [InlineData("crème brûlée Ångström", "crème brûlée Ångström")]
    public void FixTextRepairsWhatFtfyRepairs(string input, string expected) =>
        Assert.Equal(expected, ClipTextCleaner.FixText(input));
}
