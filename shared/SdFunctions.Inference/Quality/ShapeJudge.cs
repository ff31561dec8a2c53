namespace SdFunctions.Inference.Quality;

/// <summary>What <see cref="ShapeJudge"/> read from a picture; <c>"none"</c> for colour and kind when no shape was found.</summary>
/// <param name="Bbox">The shape region's box (zeros when there is none).</param>
public sealed record ShapeVerdict(string Background, string Colour, string Kind, int Area, double Fill, double Asym, PixelBox Bbox)
{
    public const string None = "none";

    /// <summary>Whether the picture shows <paramref name="caption"/>: background, shape colour and kind all right.</summary>
    public bool Matches(ShapesCaption caption) => Background == caption.Background && Colour == caption.Colour && Kind == caption.Shape;
}

/// <summary>A rectangle of pixels: its top-left corner and size.</summary>
public readonly record struct PixelBox(int X, int Y, int Width, int Height);

/// <summary>
/// Reads a tiny-shapes picture back, by the rules of the fixture's README: the background is the colour of the border ring's
/// per-channel median; every pixel takes its nearest palette colour; what is neither of the background's colour nor close to
/// it splits into 4-connected regions of one colour, and the largest is the shape; its kind comes from how much of its box it
/// fills and how its top quarter compares with its bottom quarter.
/// </summary>
public static class ShapeJudge
{
    /// <summary>Pixels within this RGB distance of the border's median count as background whatever their nearest colour.</summary>
    private const double BackgroundDistance = 60;

    /// <summary>A region under this share of the picture is not a shape.</summary>
    private const double MinShapeShare = 0.005;

    /// <param name="rgb">Height × width × 3 bytes, row-major.</param>
    public static ShapeVerdict Judge(ReadOnlySpan<byte> rgb, int width, int height)
    {
        if (rgb.Length != width * height * 3) throw new ArgumentException($"{width}×{height} RGB is {width * height * 3} bytes, not {rgb.Length}.", nameof(rgb));
        var (mr, mg, mb) = BorderMedian(rgb, width, height);
        int background = Nearest(mr, mg, mb);

        // Label each pixel with its nearest palette colour, or -1 for background.
        var labels = new int[width * height];
        for (int i = 0; i < labels.Length; i++)
        {
            byte r = rgb[3 * i], g = rgb[3 * i + 1], b = rgb[3 * i + 2];
            int label = Nearest(r, g, b);
            labels[i] = label == background || Distance(r, g, b, mr, mg, mb) <= BackgroundDistance ? -1 : label;
        }

        var (shape, area) = LargestRegion(labels, width, height);
        string backgroundName = ShapesCaption.Palette[background].Name;
        if (area < MinShapeShare * width * height) return new(backgroundName, ShapeVerdict.None, ShapeVerdict.None, area, 0, 0, default);

        int x0 = width, y0 = height, x1 = -1, y1 = -1;
        for (int i = 0; i < shape.Length; i++)
        {
            if (!shape[i]) continue;
            int x = i % width, y = i / width;
            x0 = Math.Min(x0, x); x1 = Math.Max(x1, x); y0 = Math.Min(y0, y); y1 = Math.Max(y1, y);
        }
        int boxWidth = x1 - x0 + 1, boxHeight = y1 - y0 + 1, quarter = Math.Max(1, boxHeight / 4);
        int top = 0, bottom = 0;
        for (int i = 0; i < shape.Length; i++)
        {
            if (!shape[i]) continue;
            int y = i / width;
            if (y < y0 + quarter) top++;
            if (y > y1 - quarter) bottom++;
        }
        double fill = (double)area / (boxWidth * boxHeight), asym = (double)top / Math.Max(1, bottom);
        string kind = fill < 0.64 || asym < 0.45 ? "triangle" : fill >= 0.89 ? "square" : "circle";
        int colour = labels[Array.IndexOf(shape, true)];
        return new(backgroundName, ShapesCaption.Palette[colour].Name, kind, area, fill, asym, new PixelBox(x0, y0, boxWidth, boxHeight));
    }

    /// <summary>The per-channel median (numpy's: the mean of the middle two of an even count) of the outer max(2, W/32) px.</summary>
    private static (double R, double G, double B) BorderMedian(ReadOnlySpan<byte> rgb, int width, int height)
    {
        int ring = Math.Max(2, width / 32);
        var channels = new[] { new List<byte>(), new List<byte>(), new List<byte>() };
        for (int y = 0; y < height; y++)
            for (int x = 0; x < width; x++)
            {
                if (x >= ring && x < width - ring && y >= ring && y < height - ring) continue;
                for (int c = 0; c < 3; c++) channels[c].Add(rgb[3 * (y * width + x) + c]);
            }
        double Median(List<byte> values)
        {
            values.Sort();
            int n = values.Count;
            return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2.0;
        }
        return (Median(channels[0]), Median(channels[1]), Median(channels[2]));
    }

    private static int Nearest(double r, double g, double b)
    {
        int best = 0;
        double bestDistance = double.MaxValue;
        for (int i = 0; i < ShapesCaption.Palette.Count; i++)
        {
            var p = ShapesCaption.Palette[i];
            double d = Distance(r, g, b, p.R, p.G, p.B);
            if (d < bestDistance) (best, bestDistance) = (i, d);
        }
        return best;
    }

    private static double Distance(double r, double g, double b, double r2, double g2, double b2) =>
        Math.Sqrt((r - r2) * (r - r2) + (g - g2) * (g - g2) + (b - b2) * (b - b2));

    /// <summary>The largest 4-connected region of one label (labels ≥ 0), as a mask, and its area; the first found wins a tie.</summary>
    private static (bool[] Mask, int Area) LargestRegion(int[] labels, int width, int height)
    {
        var region = new int[labels.Length];
        Array.Fill(region, -1);
        int best = -1, bestArea = 0, next = 0;
        var stack = new Stack<int>();
        for (int start = 0; start < labels.Length; start++)
        {
            if (labels[start] < 0 || region[start] >= 0) continue;
            int id = next++, area = 0;
            region[start] = id;
            stack.Push(start);
            while (stack.Count > 0)
            {
                int i = stack.Pop();
                area++;
                int x = i % width, y = i / width;
                foreach (int j in (ReadOnlySpan<int>)[x > 0 ? i - 1 : -1, x < width - 1 ? i + 1 : -1, y > 0 ? i - width : -1, y < height - 1 ? i + width : -1])
                {
                    if (j < 0 || region[j] >= 0 || labels[j] != labels[start]) continue;
                    region[j] = id;
                    stack.Push(j);
                }
            }
            if (area > bestArea) (best, bestArea) = (id, area);
        }
        return ([.. region.Select(r => r == best && best >= 0)], bestArea);
    }
}
